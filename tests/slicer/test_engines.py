"""The module's engines outside Slicer: local and remote give the same masks, and the
remote one works in a Python without torch (as a Slicer without the PyTorch extension)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
CORE_DIR = Path(__file__).resolve().parents[2] / "core"
sys.path.insert(0, str(MODULE_DIR))

from sammed2d.objects import ObjectPrompts, SlicePrompt  # noqa: E402
from SAMMed2DLib import LocalEngine, make_engine  # noqa: E402
from tests.remote.conftest import running_server  # noqa: E402

AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def volume():
    rng = np.random.default_rng(5)
    data = rng.normal(-80, 8, (44, 40, 9)).astype(np.int16)
    data[10:28, 12:30, 2:7] = 170
    return data


@pytest.fixture(scope="module")
def slicer_server(tiny_checkpoint):
    from sammed2d import load_model

    with running_server(load_model(str(tiny_checkpoint), device="cpu"), api_key="s1") as served:
        yield served


def test_remote_engine_equals_the_local_one(slicer_server, tiny_checkpoint):
    url, _ = slicer_server
    local = make_engine("local", str(tiny_checkpoint))
    remote = make_engine("remote", url, "s1")
    assert isinstance(local, LocalEngine) and remote.remote and "at http://" in remote.describe()
    data, prompt = volume(), SlicePrompt(box=np.array([10.0, 8, 32, 30]))
    a = local.segment_slice(data, 4, prompt, 2, AFFINE, "abdomen")
    b = remote.segment_slice(data, 4, prompt, 2, AFFINE, "abdomen")
    assert a[0].any() and np.array_equal(a[0], b[0]) and a[1] == b[1]
    objects = [ObjectPrompts(1, {4: prompt}, (1, 7), "tumour")]
    seen = []
    ra = local.propagate(data, objects, 2, AFFINE, "abdomen")
    rb = remote.propagate(data, objects, 2, AFFINE, "abdomen", progress=lambda d, t: seen.append(t))
    assert np.array_equal(ra.labels, rb.labels) and seen
    assert remote.record()[0] == local.record()[0]


def test_the_local_engine_runs_in_the_chosen_precision(tiny_checkpoint, monkeypatch):
    """The Precision choice reaches the model: fp32 runs as graphs; bf16 runs under
    autocast where the CPU has bf16 instructions, and is refused in one line where not."""
    import torch

    from sammed2d import graphs
    from sammed2d.errors import CheckpointError

    fp32 = make_engine("local", str(tiny_checkpoint), precision="fp32")
    assert graphs.wanted(fp32.model) and fp32.describe().endswith("on cpu, fp32")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    refused = make_engine("local", str(tiny_checkpoint), precision="bf16")
    with pytest.raises(CheckpointError, match="no bf16 instructions"):
        refused.segment_slice(volume(), 4, SlicePrompt(box=np.array([10.0, 8, 32, 30])), 2,
                              AFFINE, "abdomen")  # fmt: skip
    monkeypatch.setattr("sammed2d.precision.cpu_has_bf16", lambda: True)
    bf16 = make_engine("local", str(tiny_checkpoint), precision="bf16")
    assert bf16.model.autocast_dtype == torch.bfloat16 and bf16.describe().endswith("bf16")
    assert not graphs.wanted(bf16.model)  # autocast is not kept by tracing: eager


CHOSEN_WITHOUT_LOADING = """
import sys, time
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from SAMMed2DLib import BackgroundRun, make_engine
start = time.perf_counter()
engine = make_engine("local", sys.argv[1])
chosen = time.perf_counter() - start
print("torch" in sys.modules, engine.model_pending, engine.describe())
import numpy as np
from sammed2d.objects import SlicePrompt
data = np.zeros((44, 40, 9), np.int16)
data[10:28, 12:30, 2:7] = 170
box = SlicePrompt(box=np.array([10.0, 8, 32, 30]))
run = BackgroundRun(lambda progress, stop: engine.segment_slice(data, 4, box, 2, np.eye(4), "auto"))
assert run.wait(120)
print(run.poll()[1][0], engine.model_pending, engine.describe())
"""


def test_choosing_the_local_engine_leaves_the_model_to_the_first_run(tiny_checkpoint):
    """Choosing the engine (on Slicer's GUI thread) neither imports torch nor loads the
    model: the first click's background run does, and the model then stays loaded."""
    out = subprocess.run(
        [sys.executable, "-c", CHOSEN_WITHOUT_LOADING, str(tiny_checkpoint), str(MODULE_DIR),
         str(CORE_DIR)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = out.stdout.strip().splitlines()[-2:]
    assert before.startswith("False True ") and "loads at the first click" in before
    assert after.startswith("done False ") and after.endswith("on cpu, fp32")


def test_a_wrong_key_fails_when_the_engine_is_chosen(slicer_server):
    from sammed2d.remote import RemoteError

    url, _ = slicer_server
    with pytest.raises(RemoteError, match="API key"):
        make_engine("remote", url, "nope")


REMOTE_WITHOUT_TORCH = """
import importlib.abc, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "scipy", "skimage", "SimpleITK", "nibabel"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
sys.path[:0] = [sys.argv[3], sys.argv[4]]
import numpy as np
from SAMMed2DLib import PromptLog, make_engine
from sammed2d.objects import SlicePrompt
rng = np.random.default_rng(5)
data = rng.normal(-80, 8, (44, 40, 9)).astype(np.int16)
data[10:28, 12:30, 2:7] = 170
engine = make_engine("remote", sys.argv[1], sys.argv[2])
mask, score = engine.segment_slice(data, 4, SlicePrompt(box=np.array([10.0, 8, 32, 30])), 2,
                                   np.diag([-0.8, -0.8, 2.5, 1.0]), "abdomen")
log = PromptLog()
log.record(1, 2, 4, SlicePrompt(box=np.array([10.0, 8, 32, 30])), "tumour")
objects = len(log.prompt_file("m", None, "abdomen").objects)
print(json.dumps({"pixels": int(mask.sum()), "score": score,
                  "torch": "torch" in sys.modules, "objects": objects}))
"""


def test_remote_mode_needs_no_torch_nor_the_engines_scientific_stack(
    slicer_server, tiny_checkpoint
):
    url, _ = slicer_server
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REMOTE_WITHOUT_TORCH), url, "s1",
         str(MODULE_DIR), str(CORE_DIR)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    local = make_engine("local", str(tiny_checkpoint))
    mask, score = local.segment_slice(
        volume(), 4, SlicePrompt(box=np.array([10.0, 8, 32, 30])), 2, AFFINE, "abdomen"
    )
    assert report == {"pixels": int(mask.sum()), "score": score, "torch": False, "objects": 1}


def test_remote_mode_in_a_fresh_environment_without_torch(slicer_server, tmp_path):
    """A virtual environment holding numpy only, as a Slicer without the PyTorch extension."""
    import venv

    url, _ = slicer_server
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    got = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "numpy"], capture_output=True, text=True
    )
    if got.returncode != 0:
        pytest.skip(f"numpy could not be installed into a fresh environment: {got.stderr[-300:]}")
    out = subprocess.run(
        [str(python), "-c", textwrap.dedent(REMOTE_WITHOUT_TORCH), url, "s1",
         str(MODULE_DIR), str(CORE_DIR)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["pixels"] > 0 and report["objects"] == 1
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True)
    assert "torch" not in listed.stdout.lower()


def test_the_local_engine_fine_tunes_a_copy_and_keeps_its_embeddings(tiny_checkpoint, tmp_path):
    """Slicer's Fine-tune: the decoder of a copy is trained and written; the engine's own
    model does not change; the next engine (the tuned file) takes the embedding cache over
    and finds every slice in it. Cancelled, nothing is written."""
    import torch

    from sammed2d.errors import Cancelled, VolumeIOError
    from sammed2d.predictor import embed_slices

    engine = make_engine("local", str(tiny_checkpoint))
    given = {k: v.clone() for k, v in engine.model.state_dict().items()}
    data = volume()
    labels = np.zeros(data.shape, np.uint8)
    labels[10:28, 12:30, 2:7] = 1
    with pytest.raises(VolumeIOError, match="saved as .pth"):
        engine.finetune(data, labels, 2, AFFINE, "abdomen", tmp_path / "t.nii.gz")
    with pytest.raises(Cancelled):
        engine.finetune(data, labels, 2, AFFINE, "abdomen", tmp_path / "c.pth",
                        shouldStop=lambda: True)  # fmt: skip
    assert not (tmp_path / "c.pth").exists()

    steps = []
    out = tmp_path / "tuned.pth"
    report = engine.finetune(data, labels, 2, AFFINE, "abdomen", out,
                             progress=lambda done, total: steps.append((done, total)))  # fmt: skip
    assert out.exists() and (tmp_path / "tuned.pth.json").exists()
    assert report.train_samples == 4 and report.val_samples == 1 and steps[-1][0] == steps[-1][1]
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, given[k]), k

    tuned = make_engine("local", str(out), cache=engine.cache)
    assert tuned.cache is engine.cache and tuned.model.weights_id != engine.model.weights_id
    from sammed2d.intensity import intensity_range, to_rgb, to_uint8

    lo, hi = intensity_range(data, "abdomen")
    images = [to_rgb(to_uint8(data[:, :, k], lo, hi)) for k in range(2, 7)]
    hits = []
    embed_slices(engine.model, images, cache=engine.cache)
    embed_slices(tuned.model, images, cache=tuned.cache, progress=lambda d, t: hits.append(d))
    assert hits[0] == len(images)


def test_a_remote_engine_refuses_to_fine_tune(slicer_server):
    from sammed2d.errors import SamMed2DError
    from SAMMed2DLib import LOCAL_ONLY

    url, _ = slicer_server
    with pytest.raises(SamMed2DError, match="choose the local engine"):
        make_engine("remote", url, "s1").finetune()
    assert "local engine" in LOCAL_ONLY
