"""bf16 encoding: where it is offered, what it changes, and that it never mixes with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed2d import EmbeddingCache, load_model
from sammed2d.cache import embedding_key
from sammed2d.errors import CheckpointError
from sammed2d.precision import autocast_dtype, cpu_has_bf16, set_precision
from sammed2d.predictor import embed_slices


def test_bf16_embeddings_are_close_to_fp32_and_cached_apart(tiny_checkpoint):
    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    fp32 = load_model(str(tiny_checkpoint), device="cpu")
    bf16 = load_model(str(tiny_checkpoint), device="cpu", precision="bf16")
    cache = EmbeddingCache()
    a = embed_slices(fp32, images, cache=cache)
    b = embed_slices(bf16, images, cache=cache)
    assert len(cache) == 4  # four entries: the precisions never share one
    for x, y in zip(a, b):
        assert y.embedding.dtype == torch.float32
        rel = (x.embedding - y.embedding).norm() / x.embedding.norm()
        assert 0 < rel < 0.05, rel  # changed, but only by bf16 rounding
    key = embedding_key(torch.zeros(1, 3, 8, 8), fp32)
    assert key != embedding_key(torch.zeros(1, 3, 8, 8), bf16)


def test_bf16_is_refused_where_there_is_no_fast_path(tiny_checkpoint, monkeypatch):
    model = load_model(str(tiny_checkpoint), device="cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(CheckpointError, match="no bf16 instructions"):
        set_precision(model, "bf16")
    with pytest.raises(CheckpointError, match="expected fp32 or bf16"):
        autocast_dtype("int8", torch.device("cpu"))
    assert model.precision == "fp32" and model.autocast_dtype is None


def test_bf16_is_refused_on_x86_cpus_that_only_emulate_it(tiny_checkpoint, monkeypatch):
    """oneDNN says yes on any AVX-512 CPU, but without AVX512-BF16 or AMX it converts to
    fp32 and runs slower than fp32: such a CPU is refused, and one with them is not."""
    from sammed2d import precision

    model = load_model(str(tiny_checkpoint), device="cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    for name in precision._PROBES:
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not cpu_has_bf16()
    with pytest.raises(CheckpointError, match="no bf16 instructions"):
        set_precision(model, "bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_has_bf16()
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    # Elsewhere (an Arm server, Apple silicon) oneDNN's own answer stands.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    assert cpu_has_bf16()


def test_gpus_without_native_bf16_get_fp16(monkeypatch):
    """A T4 or V100 (compute capability 7) emulates bf16 slowly: fp16 there, bf16 from
    Ampere on, for the model's own device."""
    asked = []

    def capability(device):
        asked.append(device)
        return (7, 5) if device.index == 1 else (8, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert autocast_dtype("bf16", torch.device("cuda:1")) == torch.float16
    assert autocast_dtype("bf16", torch.device("cuda:0")) == torch.bfloat16
    assert [d.index for d in asked] == [1, 0]
    assert autocast_dtype("fp32", torch.device("cuda:1")) is None


def test_x86_flags_are_read_from_cpuinfo_without_torch_probes(monkeypatch, tmp_path):
    from sammed2d import precision

    for name in precision._PROBES:
        monkeypatch.delattr(torch.cpu, name, raising=False)
    real_open = open

    def cpuinfo(flags):
        def fake_open(path, *args, **kwargs):
            if path == "/proc/cpuinfo":
                info = tmp_path / "cpuinfo"
                info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx512f {flags}\n")
                return real_open(info, *args, **kwargs)
            return real_open(path, *args, **kwargs)

        return fake_open

    monkeypatch.setattr("builtins.open", cpuinfo("avx512bw avx512_vnni"))
    assert not precision._x86_native_bf16()
    monkeypatch.setattr("builtins.open", cpuinfo("avx512bw avx512_bf16"))
    assert precision._x86_native_bf16()


def test_bf16_masks_agree_with_fp32_on_the_shared_ct(litemedsam):
    """The example CT's four organs, the label's box on three slices: bf16's masks match
    fp32's (Dice over the 4 x 30 masks in benchmarks/bf16_masks.py: 0.991-0.995 per organ)."""
    from ..conftest import ABDOMEN_CT, need

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    from sammed2d.evaluation import dice, slice_box
    from sammed2d.io import read_volume
    from sammed2d.predictor import Predictor
    from sammed2d.propagate import volume_slices

    ct = read_volume(need(ABDOMEN_CT / "ct.nii.gz"))
    labels = read_volume(need(ABDOMEN_CT / "labels.nii.gz")).array
    bf16 = load_model("litemedsam", device="cpu", precision="bf16")
    runs = []
    for model in (litemedsam, bf16):
        slices = volume_slices(model, ct.array, 2, ct.affine, "abdomen", None, "array", None)
        runs.append((Predictor(model), slices))
    dices = []
    for index in (8, 15, 22):
        label_slice = labels[:, :, index]
        for predictor, slices in runs:
            predictor.set_embedding(slices.embedding(index))
        for organ in (v for v in np.unique(label_slice) if v):
            organ_mask = label_slice == organ
            if organ_mask.sum() < 100:  # an organ's tip: a few pixels either way swing its Dice
                continue
            box = slice_box(organ_mask)
            a, b = (p.predict(box=box, multimask_output=False)[0][0] for p, _ in runs)
            assert a.sum() > 50  # a real organ mask, not two empty ones
            dices.append(dice(a, b))
    assert len(dices) >= 8
    assert min(dices) >= 0.95 and np.mean(dices) >= 0.985, dices
    # and the two runs did differ: bf16 was applied, not fp32 twice
    fp32_emb, bf16_emb = (slices.embedding(15).embedding for _, slices in runs)
    assert not torch.equal(fp32_emb, bf16_emb)


def test_window_softmax_in_bf16_is_the_fp32_softmax_rounded():
    """bf16 attention scores over short rows take their softmax through fp32, over long
    ones torch's bf16 kernel (whichever is faster on the CPU): either way the result is
    bf16, each weight the fp32 softmax's to within bf16 rounding, rows sum to 1."""
    from sammed2d.models.tiny_vit import _softmax

    scores = torch.randn(40, 49, 49, generator=torch.Generator().manual_seed(0)) * 4
    exact = scores.bfloat16().float().softmax(dim=-1)
    got = _softmax(scores.bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), exact, rtol=2**-8, atol=1e-6)
    assert torch.allclose(got.float().sum(-1), torch.ones(40, 49), atol=0.02)
    assert torch.equal(_softmax(scores), scores.softmax(dim=-1))
    # the fp32 route itself: torch's bf16 kernel differs from it in a few of these values
    many = torch.randn(361, 49, 49, generator=torch.Generator().manual_seed(1)).bfloat16()
    assert torch.equal(_softmax(many), many.float().softmax(dim=-1).bfloat16())
    # stage 3's 196-token windows: the bf16 kernel, within rounding of the fp32 softmax
    long = torch.randn(25, 196, 196, generator=torch.Generator().manual_seed(2)) * 4
    got = _softmax(long.bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, long.bfloat16().softmax(dim=-1))
    exact = long.bfloat16().float().softmax(dim=-1)
    assert torch.allclose(got.float(), exact, rtol=2**-8, atol=1e-6)
    assert torch.allclose(got.float().sum(-1), torch.ones(25, 196), atol=0.02)
