"""Model calls as TorchScript graphs, for hosts whose GUI thread shares Python's lock.

An eager forward pass is hundreds of small operator calls, and each one takes Python's
global lock to start. In napari or Slicer the GUI thread holds that lock between its own
events, which slowed a click's decoder call about 4x in a live napari viewer
(`benchmarks/napari_latency.py` prints the engine's own time). A traced graph runs all its
operators in C++ without the lock: beside a spinning Python thread the LiteMedSAM decoder
took a 1536 ms median eager and 63.5 ms as a graph (`benchmarks/predictor.py --busy-thread`).

The graphs run the same operators in the same order as the eager modules (graph
optimisation is off), except oneDNN's fused products (models/fused.py), which the tracer
cannot record: the graphs take the plain products there, whose sums can come in another
order on some CPUs (logits within 1e-4, tested). One graph is traced per input
signature (prompt kinds and shapes, batch size) the first time it is needed; tracing runs
the module once. fp32 only: bf16 models run under autocast, which tracing does not keep.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict

import torch
from torch import nn

MAX_GRAPHS = 16  # per model; an interactive session uses a handful of prompt layouts


def enable(model: nn.Module, on: bool = True) -> None:
    """Run `model`'s encoder and decoder as traced graphs from now on (fp32 models)."""
    model.use_graphs = on
    if not on:
        model.__dict__.pop("_graphs", None)


def wanted(model: nn.Module) -> bool:
    return (
        bool(getattr(model, "use_graphs", False)) and getattr(model, "autocast_dtype", None) is None
    )


class _Encode(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch)


class _Decode(nn.Module):
    """Prompt encoder and mask decoder for one layout of prompts (which kinds are given)."""

    def __init__(self, model, points: bool, boxes: bool, masks: bool, multimask: bool | None):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder
        self.points, self.boxes, self.masks, self.multimask = points, boxes, masks, multimask

    def forward(self, embedding: torch.Tensor, *prompts: torch.Tensor):
        it = iter(prompts)
        points = (next(it), next(it)) if self.points else None
        boxes = next(it) if self.boxes else None
        masks = next(it) if self.masks else None
        sparse, dense = self.prompt_encoder(points, boxes, masks)
        pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder(embedding, pe, sparse, dense, self.multimask)


_lock = threading.Lock()


def _graph(model: nn.Module, key: tuple, make, inputs: tuple):
    """The graph for `key`, traced by the first thread that needs it (the click thread and
    the background embedding may ask at once). Least recently used goes first, so a run of
    new point layouts does not push out the encoder."""
    graphs = model.__dict__.setdefault("_graphs", OrderedDict())
    graph = graphs.get(key)
    if graph is None:
        with _lock:
            graph = graphs.get(key)  # traced meanwhile by the thread that held the lock?
            if graph is None:
                with warnings.catch_warnings(), torch.no_grad():
                    # Shapes are in the key, so the shape arithmetic the tracer warns about
                    # is fixed per graph by design.
                    warnings.simplefilter("ignore")
                    graph = torch.jit.trace(make(), inputs, check_trace=False)
                if len(graphs) >= MAX_GRAPHS:
                    graphs.popitem(last=False)
                graphs[key] = graph
    with contextlib.suppress(KeyError):  # evicted by another thread meanwhile
        graphs.move_to_end(key)
    return graph


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device.type) for t in tensors)


def encode(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The image encoder on `batch` through its graph (call under inference mode)."""
    key = ("encode", *_signature([batch]))
    graph = _graph(model, key, lambda: _Encode(model.image_encoder), (batch,))
    with torch.jit.optimized_execution(False):
        return graph(batch)


def decode(model, embedding, points, boxes, masks, multimask: bool | None):
    """Prompt encoder and mask decoder through the graph for this prompt layout."""
    prompts = [*(points or ()), *([boxes] if boxes is not None else [])]
    prompts += [masks] if masks is not None else []
    kind = None if multimask is None else bool(multimask)  # None: all four masks
    layout = (points is not None, boxes is not None, masks is not None, kind)
    key = ("decode", layout, *_signature([embedding, *prompts]))
    graph = _graph(model, key, lambda: _Decode(model, *layout), (embedding, *prompts))
    with torch.jit.optimized_execution(False):
        return graph(embedding, *prompts)


def warm(model) -> None:
    """Trace the encoder and the one-box decoder now (about two forward passes), so that
    the first click does not: tracing itself runs in Python and holds the lock."""
    import numpy as np

    from .predictor import decode as decode_prompts
    from .predictor import embed_slices

    if not wanted(model):
        return
    size = model.spec.input_size
    (emb,) = embed_slices(model, [np.zeros((size, size, 3), np.uint8)], 1)
    box = np.array([[0, 0, size / 2, size / 2]], np.float32)
    # the Predictor's default, the volume walk's, and a prompted box's (see propagate)
    for multimask in (True, False, None):
        decode_prompts(model, emb, boxes=box, multimask_output=multimask)
