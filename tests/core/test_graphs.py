"""Traced graphs (sammed2d.graphs) give exactly what the eager modules give."""

from __future__ import annotations

import numpy as np
import torch

from sammed2d import graphs, load_model
from sammed2d.predictor import decode, embed_slices


def _image(seed=0, shape=(70, 90)):
    rng = np.random.default_rng(seed)
    return (rng.random((*shape, 3)) * 255).astype(np.uint8)


def _all_layouts(model, emb):
    box = np.array([[10, 12, 50, 40]], np.float32)
    two_boxes = np.array([[10, 12, 50, 40], [30, 20, 80, 60]], np.float32)
    points = np.array([[[20, 25], [40, 30]]], np.float32)
    labels = np.array([[1, 0]])
    mask = np.random.default_rng(1).normal(size=(1, 1, *emb.embedding.shape[-2:])) * 4
    mask = np.repeat(np.repeat(mask, 4, axis=2), 4, axis=3).astype(np.float32)
    return [
        decode(model, emb, None, None, box, None, False),
        decode(model, emb, None, None, box, None, True),
        decode(model, emb, None, None, two_boxes, None, False),
        decode(model, emb, points, labels, None, None, True),
        decode(model, emb, points, labels, box, None, False),
        decode(model, emb, None, None, box, mask, False),
    ]


def _same(model, exact: bool = True):
    images = [_image(0), _image(1)]
    graphs.enable(model, False)
    eager_emb = embed_slices(model, images, batch_size=2)
    eager = _all_layouts(model, eager_emb[0])
    graphs.enable(model)
    try:
        graph_emb = embed_slices(model, images, batch_size=2)
        traced = _all_layouts(model, graph_emb[0])
        again = _all_layouts(model, graph_emb[0])  # reused graphs, not new traces
        count = len(model._graphs)
    finally:
        graphs.enable(model, False)
    for a, b in zip(eager_emb, graph_emb):
        assert torch.equal(a.embedding, b.embedding)
    for (la, ia), (lb, ib), (lc, ic) in zip(eager, traced, again):
        if exact:
            assert torch.equal(la, lb) and torch.equal(ia, ib)
        else:  # oneDNN's products eager, the plain ones in the graph: sums in another order
            assert torch.allclose(la, lb, rtol=1e-5, atol=1e-4)
            assert torch.allclose(ia, ib, rtol=1e-5, atol=1e-5)
            sure = la.abs() > 1e-3  # a mask pixel flips only where its logit is ~0
            assert torch.equal((la > 0)[sure], (lb > 0)[sure])
        assert torch.equal(lb, lc) and torch.equal(ib, ic)
    return count


def test_graphs_equal_eager_for_sammed2d(tiny_checkpoint, monkeypatch):
    # The decoder's upscaling runs fused oneDNN products eager, which the tracer cannot
    # record: with them off the graph and the eager modules run the same operators...
    from sammed2d.models import fused

    model = load_model(tiny_checkpoint, device="cpu")
    monkeypatch.setattr(fused, "ENABLED", False)
    assert _same(model) == 7  # one encoder batch and six prompt layouts
    # ... and with them on (the eager default) they agree up to the order of the sums,
    # which depends on the CPU's kernels.
    monkeypatch.setattr(fused, "ENABLED", True)
    assert _same(model, exact=False) == 7


def test_graphs_equal_eager_for_litemedsam(litemedsam, monkeypatch):
    # Eager TinyViT runs fused oneDNN calls, which the tracer cannot record; the graph
    # takes the plain path, compared here with the same path eager.
    from sammed2d.models import fused

    monkeypatch.setattr(fused, "ENABLED", False)
    assert _same(litemedsam) == 7


def test_graphs_stay_off_for_bf16_and_warm_traces_the_click(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    model.autocast_dtype = torch.bfloat16  # as precision="bf16" sets it
    graphs.enable(model)
    assert not graphs.wanted(model)
    graphs.warm(model)
    assert not model.__dict__.get("_graphs")
    model.autocast_dtype = None
    graphs.warm(model)
    kinds = sorted(key[0] for key in model._graphs)
    assert kinds == ["decode", "decode", "decode", "encode"]
    # a prompted box's click decodes all four masks at once (see propagate._agreeing)
    assert {key[1][3] for key in model._graphs if key[0] == "decode"} == {True, False, None}
    graphs.enable(model, False)
    assert "_graphs" not in model.__dict__
