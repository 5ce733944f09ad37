"""Checkpoints are untrusted input: each bad file gets one clear error, nothing runs."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from sammed2d import load_model
from sammed2d.errors import CheckpointError
from sammed2d.models import read_state_dict


def test_official_layout_loads_without_the_optimizer(fixtures_dir):
    state = read_state_dict(fixtures_dir / "sammed2d_tiny.pth")
    assert all(torch.is_tensor(v) for v in state.values())
    assert "image_encoder.blocks.0.Adapter.norm.weight" in state


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "nowhere.pth")


def test_truncated_file(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        load_model(bad)
    assert "internal" not in str(caught.value)  # torch's advice after its first sentence


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a model\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: a text file"):
        load_model(bad)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"<!DOCTYPE html><html><head><title>Sign in", "a text file, not PyTorch weights"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PyTorch"),
    ],
)
def test_a_file_that_is_no_pytorch_file_is_named_for_what_it_is(tmp_path, content, reason):
    """An empty file, a web page saved in place of a download (the usual wrong file) and
    random bytes each get one line saying what the file is, not torch's advice about
    `weights_only` ("Weights only load failed. In PyTorch 2.6, we changed...")."""
    bad = tmp_path / "sam-med2d_b.pth"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as caught:
        load_model(bad)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message
    if content.startswith(b"<!DOCTYPE"):
        assert "it begins '<!DOCTYPE html><html><head><title>Sign" in message


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_global_is_refused_and_never_called(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"refused to unpickle (builtins\.)?print"):
        read_state_dict(bad)
    assert "pwned" not in capsys.readouterr().out


def test_optimizer_stand_in_keeps_nothing(tmp_path):
    """An Adam object is allowed only as an inert stand-in: no optimizer code runs."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param])
    param.sum().backward()
    opt.step()
    path = tmp_path / "with_optimizer.pth"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": opt}, path)
    state = read_state_dict(path)
    assert list(state) == ["w"]


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(path)


def test_other_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM-family model"):
        load_model(path)


def test_missing_and_unexpected_keys(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys.*1 unexpected keys"):
        load_model(path)


def test_wrong_shape(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"wrong shapes .*iou_token.weight is \(1, 128\)"):
        load_model(path)


def test_name_with_wrong_weights_file(tmp_path, tiny_checkpoint, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "sam_vit_b_01ec64.pth").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(folder))
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64.pth has SHA-256 .*expected the"):
        load_model("sam-vit-b")


def test_named_model_without_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="sam-med2d_b.pth not found"):
        load_model("sam-med2d")


def test_unknown_name():
    with pytest.raises(CheckpointError, match="not a known name"):
        load_model("sam-vit-x")


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "empty.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.txt", "x")
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_plain_pickle_without_tensors_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_old_torch_refuses_unverified_files_but_reads_verified_ones(tmp_path, monkeypatch):
    from sammed2d.models import checkpoint

    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.setattr(checkpoint, "torch_version", lambda: (2, 5))
    with pytest.raises(
        CheckpointError, match=r"cannot load an unverified checkpoint.*torch>=2\.10"
    ):
        read_state_dict(path)
    assert torch.equal(read_state_dict(path, verified=True)["w"], torch.ones(2))


def test_bundled_weights_are_hash_checked(tmp_path, monkeypatch, tiny_checkpoint):
    """Another file under the bundled name, found where named weights are looked up."""
    from sammed2d.models import registry

    (tmp_path / "lite_medsam.pth").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(registry.metadata, "distribution", _not_installed)
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(tmp_path))
    with pytest.raises(
        CheckpointError, match=r"lite_medsam.pth has SHA-256 .*expected the official"
    ):
        load_model("litemedsam")


def _not_installed(name):
    from importlib import metadata

    raise metadata.PackageNotFoundError(name)


def _vit_b_shaped(tmp_path, name, seed=0):
    """A one-block network 768 wide: the SAM / MedSAM ViT-B layout, random weights."""
    from sammed2d import build_model

    with torch.device("meta"):
        shapes = build_model("sam-vit-b", depth=1, global_attn=(0,)).state_dict()
    torch.manual_seed(seed)
    state = {k: torch.randn(v.shape) * 0.02 for k, v in shapes.items()}
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    torch.save(state, path)
    return path


def test_pipeline_never_comes_from_the_file_name(tmp_path):
    path = _vit_b_shaped(tmp_path, "medsam_vit_b.pth")
    with pytest.raises(CheckpointError, match="--preprocessing sam or --preprocessing medsam"):
        load_model(path, device="cpu")
    medsam = load_model(path, device="cpu", preprocessing="medsam")
    assert (medsam.spec.name, medsam.spec.preprocessing) == ("medsam", "medsam")
    sam = load_model(path, device="cpu", preprocessing="sam")
    assert sam.spec.preprocessing == "sam"
    with pytest.raises(CheckpointError, match="cannot take litemedsam preprocessing"):
        load_model(path, device="cpu", preprocessing="litemedsam")


def test_known_checkpoint_gets_its_pipeline_whatever_its_name(tmp_path, monkeypatch, litemedsam):
    """The hash decides: a ViT-B-shaped file (tensors cannot tell SAM from MedSAM) whose
    digest the registry knows loads with that model's pipeline, under a misleading name, and
    is read even on an old torch because its hash is verified."""
    from sammed2d.models import checkpoint, registry

    path = _vit_b_shaped(tmp_path, "sam_vit_b_01ec64.pth")
    monkeypatch.setitem(registry.KNOWN_CHECKPOINTS, checkpoint.file_sha256(path), "medsam")
    monkeypatch.setattr(checkpoint, "torch_version", lambda: (2, 5))
    model = load_model(path, device="cpu")
    assert (model.spec.name, model.spec.preprocessing) == ("medsam", "medsam")
    unknown = _vit_b_shaped(tmp_path / "other", "medsam_vit_b.pth", seed=1)
    with pytest.raises(CheckpointError, match="cannot load an unverified checkpoint"):
        load_model(unknown, device="cpu", preprocessing="medsam")
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes(open(litemedsam.weights_path, "rb").read())
    assert load_model(renamed, device="cpu").weights_id == litemedsam.weights_id


def _mutations(state):
    """(label, object to save) pairs: every way a harmless file can be malformed."""
    first_rel = "image_encoder.blocks.0.attn.rel_pos_h"
    yield "empty dict", {}
    yield "nested 100 deep", _nest(state, 100)
    yield "list of tensors", list(state.values())
    yield "int values", {k: 1 for k in state}
    yield "string keys to strings", {k: "x" for k in state}
    yield "no pos_embed", {k: v for k, v in state.items() if k != "image_encoder.pos_embed"}
    yield "no rel-pos tables", {k: v for k, v in state.items() if "rel_pos" not in k}
    yield "zero head dim", {**state, first_rel: torch.zeros(27, 0)}
    yield "1D rel-pos", {**state, first_rel: torch.zeros(27)}
    yield "zero-size pos_embed", {**state, "image_encoder.pos_embed": torch.zeros(1, 0, 0, 32)}
    yield "non-square pos_embed", {**state, "image_encoder.pos_embed": torch.zeros(1, 16, 8, 32)}
    yield "gap in blocks", {k.replace("blocks.1.", "blocks.7."): v for k, v in state.items()}
    yield "width not a multiple of heads", {**state, first_rel: torch.zeros(27, 5)}
    yield "bool tensors", {k: v.bool() for k, v in state.items()}
    yield "complex tensors", {k: v.to(torch.complex64) for k, v in state.items()}
    yield "int tensors", {k: v.to(torch.int64) for k, v in state.items()}
    yield "a NaN weight", {**state, first_rel: torch.full_like(state[first_rel], float("nan"))}
    yield "scalars", {k: torch.tensor(1.0) for k in state}
    yield "empty tensors", {k: torch.zeros(0) for k in state}
    for key in list(state)[:: max(1, len(state) // 12)]:
        yield f"drop {key}", {k: v for k, v in state.items() if k != key}
        yield f"resize {key}", {**state, key: torch.zeros(*(d + 1 for d in state[key].shape))}
        yield f"add a dim {key}", {**state, key: state[key][None]}


def _nest(state, depth):
    obj = state
    for _ in range(depth):
        obj = {"model": obj}
    return obj


def test_fuzzed_checkpoints_end_in_the_one_line_error(tmp_path, tiny_checkpoint):
    """Truncated, nested, wrong-typed, zero-sized and missing-key files: CheckpointError or a
    model, never another exception."""
    from sammed2d.cli import main

    state = torch.load(tiny_checkpoint, weights_only=True)
    raw = tiny_checkpoint.read_bytes()
    files = []
    for n, (label, obj) in enumerate(_mutations(state)):
        path = tmp_path / f"m{n}.pth"
        torch.save(obj, path)
        files.append((label, path))
    deep = tmp_path / "deep.pth"  # 5,000 nested dicts: more than torch.save can write
    key = b"X\x05\x00\x00\x00model"
    with zipfile.ZipFile(deep, "w") as zf:
        zf.writestr(
            "archive/data.pkl", b"\x80\x02" + (b"}" + key) * 5000 + b"}" + b"s" * 5000 + b"."
        )
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    files.append(("nested 5000 deep", deep))
    rng = np.random.default_rng(0)
    for n, cut in enumerate(rng.integers(1, len(raw), 8)):
        path = tmp_path / f"cut{n}.pth"
        path.write_bytes(raw[:cut])
        files.append((f"truncated at {cut}", path))
    for n in range(4):
        data = bytearray(raw)
        for i in rng.integers(0, len(raw), 64):
            data[i] ^= 0xFF
        path = tmp_path / f"flip{n}.pth"
        path.write_bytes(bytes(data))
        files.append((f"flipped bytes {n}", path))
    outcomes = {}
    for label, path in files:
        try:
            load_model(path, device="cpu")
            outcomes[label] = "loaded"
        except CheckpointError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, (label, message)
            outcomes[label] = "refused"
        except Exception as exc:  # noqa: BLE001 - what the test exists to catch
            pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
    assert outcomes["zero head dim"] == outcomes["nested 5000 deep"] == "refused"
    loaded = {k for k, v in outcomes.items() if v == "loaded"}
    assert all(k.startswith("flipped bytes") for k in loaded), loaded  # changed weights only
    label, path = files[0]
    assert main(["info"]) == 0
    out = tmp_path / "mask.png"
    image = tmp_path / "img.png"
    import imageio.v3 as iio

    iio.imwrite(image, np.zeros((20, 20), np.uint8))
    code = main(
        [
            "segment",
            str(image),
            "--box",
            "2",
            "2",
            "9",
            "9",
            "--out",
            str(out),
            "--model",
            str(path),
        ]
    )
    assert code == 2 and not out.exists()
