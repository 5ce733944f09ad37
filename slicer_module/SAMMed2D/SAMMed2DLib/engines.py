"""The model the module calls: in Slicer's own Python (torch from the PyTorch extension) or
on a `sammed2d serve` elsewhere, which needs no torch in Slicer at all.

Both engines take and return the same things (arrays in IJK voxel order, prompts in IJK
pixels), so the Logic does not care which one runs.
"""

from __future__ import annotations

import threading

LOCAL_ONLY = (
    "fine-tuning runs in Slicer's own Python: choose the local engine (the labels stay on "
    "this computer)"
)


class LocalEngine:
    remote = False

    def __init__(self, nameOrPath: str, precision: str = "fp32", cache=None) -> None:
        self.name = nameOrPath
        self.precision = precision
        # The model loads on first use, in the background run that needs it: importing
        # torch and reading the checkpoint held Slicer's GUI thread for seconds (a wait
        # cursor at the first click). A bad name or precision is reported then, in one line.
        self._model = None
        self._loading = threading.Lock()
        # Embeddings are keyed on the image encoder: another model's cache may be passed on
        # (a fine-tune of this one then embeds nothing again). Made with the model if None.
        self.cache = cache

    @property
    def model(self):
        with self._loading:
            if self._model is None:
                from sammed2d.torch_import import import_torch

                import_torch()  # torch's libraries mapped without holding Python's lock
                from sammed2d import EmbeddingCache, graphs, load_model

                # bf16 where the CPU or GPU has it; elsewhere load_model refuses in one line
                model = load_model(self.name, precision=self.precision)
                # Background runs share Python's lock with Slicer's GUI thread: graphs run
                # the model without it (sammed2d.graphs; fp32 only, bf16 runs eager).
                graphs.enable(model)
                if self.cache is None:
                    self.cache = EmbeddingCache(max_bytes=2 << 30)
                self._model = model
            return self._model

    @property
    def model_pending(self) -> bool:
        """True until the model has loaded (the first run that needs it loads it)."""
        return self._model is None

    def describe(self) -> str:
        if self._model is None:
            return f"{self.name}, {self.precision} (loads at the first click)"
        return f"{self._model.spec.name} on {self._model.device}, {self._model.precision}"

    def record(self):
        """(model name, weights SHA-256) for a prompts file."""
        from sammed2d.prompt_files import model_record

        return model_record(self.model)

    def segment_slice(self, data, index, prompt, axis, affine, preset):
        from sammed2d.propagate import segment_slice

        model = self.model  # loads it (and makes the cache) on first use
        return segment_slice(
            data, index, prompt, model, axis=axis, affine=affine, preset=preset,
            cache=self.cache,
        )  # fmt: skip

    def propagate(self, data, objects, axis, affine, preset, settings=None, progress=None,
                  shouldStop=None):  # fmt: skip
        from sammed2d.propagate import propagate

        model = self.model
        return propagate(
            data, objects, model, axis=axis, affine=affine, preset=preset,
            settings=settings, cache=self.cache, progress=progress, should_stop=shouldStop,
        )  # fmt: skip

    def finetune(self, data, labels, axis, affine, preset, out, progress=None, shouldStop=None):
        """Train the mask decoder of a copy of this model on `labels` (IJK, shaped as `data`,
        every value an object), as `sammed2d finetune` does with its defaults, and write it
        to `out` (.pth, and OUT.json); the report comes back. The engine's own model is not
        changed: it may serve clicks meanwhile."""
        from sammed2d.finetune import finetune_copy

        model = self.model
        return finetune_copy(
            self.name, out, [(data, affine, labels)], axis, preset,
            device=model.device, precision=model.precision, cache=self.cache,
            progress=None if progress is None else lambda what, done, total: progress(done, total),
            should_stop=shouldStop,
        )  # fmt: skip


class RemoteEngine:
    remote = True

    def __init__(self, url: str, apiKey: str | None = None) -> None:
        from sammed2d.remote import Client

        self.client = Client(url, apiKey or None)
        self.info = self.client.info()  # fails here, in one line, on a wrong URL or key
        self.name = url

    def describe(self) -> str:
        info = self.info
        return f"{info['model']['name']} on {info['device']} at {self.client.url}"

    def record(self):
        return self.info["model"]["name"], self.info["model"].get("sha256")

    def segment_slice(self, data, index, prompt, axis, affine, preset):
        return self.client.segment_slice(
            data, index, prompt, axis=axis, affine=affine, preset=preset
        )

    def finetune(self, *args, **kwargs):
        from sammed2d.errors import SamMed2DError

        raise SamMed2DError(LOCAL_ONLY)

    def propagate(self, data, objects, axis, affine, preset, settings=None, progress=None,
                  shouldStop=None):  # fmt: skip
        return self.client.propagate(
            data, objects, axis=axis, affine=affine, preset=preset, settings=settings,
            progress=progress, should_stop=shouldStop,
        )  # fmt: skip


def make_engine(kind: str, modelOrUrl: str, apiKey: str | None = None, precision: str = "fp32",
                cache=None):  # fmt: skip
    """`kind` "local" (a model name or checkpoint path, in `precision`; `cache` an embedding
    cache to keep) or "remote" (a server URL; the server's model and precision)."""
    if kind == "remote":
        return RemoteEngine(modelOrUrl, apiKey)
    return LocalEngine(modelOrUrl or "litemedsam", precision, cache)
