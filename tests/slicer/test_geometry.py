"""The Slicer module's Slicer-free parts with real geometry, and the module's shape."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from sammed2d.errors import PromptError  # noqa: E402
from SAMMed2DLib import (  # noqa: E402
    ObliqueViewError,
    changed_slices,
    ijk_volume_from_slicer_array,
    inside,
    point_on_slice,
    prompt_from_markups,
    roi_corners,
    slice_axis_of_view,
    slice_index_of_view,
    slicer_array_from_ijk_volume,
    view_containing,
    world_to_ijk,
)

# Slice views' SliceToRAS in Slicer's default layout: normals S (Red), R (Yellow), A (Green).
RED = np.array([[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
YELLOW = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
GREEN = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])


def lps_volume_ijk_to_ras(spacing=(0.8, 0.9, 2.5), origin_lps=(-100.0, -120.0, 30.0)):
    """A DICOM-like volume: IJK along L, P, S (so RAS directions -1, -1, +1)."""
    m = np.eye(4)
    m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    m[:3, 3] = np.array(origin_lps) * [-1, -1, 1]
    return m


def oblique_ijk_to_ras(degrees=25.0):
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([1.0, 1.2, 3.0])
    m[:3, 3] = [10.0, -5.0, 40.0]
    return m


def test_ras_ijk_round_trip_through_a_parent_transform():
    ijk_to_ras = oblique_ijk_to_ras()
    parent = np.eye(4)
    parent[:3, 3] = [5.0, -7.0, 12.0]  # the volume was moved in the scene
    parent[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    ijk = np.array([[3.0, 4.0, 5.0], [0.0, 0.0, 0.0]])
    world = (np.c_[ijk, np.ones(2)] @ (parent @ ijk_to_ras).T)[:, :3]
    assert np.allclose(world_to_ijk(world, ijk_to_ras, parent), ijk)
    # ignoring the parent transform puts the point somewhere else entirely
    assert not np.allclose(world_to_ijk(world, ijk_to_ras), ijk, atol=0.5)


@pytest.mark.parametrize(("view", "axis"), [(RED, 2), (YELLOW, 0), (GREEN, 1)])
def test_each_view_maps_to_its_axis(view, axis):
    assert slice_axis_of_view(view, lps_volume_ijk_to_ras()) == axis


def test_view_axis_follows_the_direction_matrix():
    # a volume acquired sagittally: its k axis points along R, so the Yellow view slices k
    m = np.eye(4)
    m[:3, :3] = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]) @ np.diag([1.0, 1.0, 2.0])
    assert slice_axis_of_view(YELLOW, m) == 2
    assert slice_axis_of_view(RED, m) == 1


def test_oblique_view_is_refused_with_a_message():
    with pytest.raises(ObliqueViewError, match="oblique"):
        slice_axis_of_view(RED, oblique_ijk_to_ras(25.0))


def test_slice_index_from_the_view_origin():
    ijk_to_ras = lps_volume_ijk_to_ras()
    view = RED.copy()
    view[:3, 3] = (ijk_to_ras @ [10, 20, 7.3, 1.0])[:3]
    assert slice_index_of_view(view, ijk_to_ras, None, (40, 50, 12), 2) == 7
    view[:3, 3] = (ijk_to_ras @ [10, 20, 30, 1.0])[:3]
    with pytest.raises(PromptError, match="outside the volume"):
        slice_index_of_view(view, ijk_to_ras, None, (40, 50, 12), 2)


def test_check_next_jumps_along_the_volumes_axis_without_panning():
    # A moved, sagittally acquired volume seen in the Yellow view: its slice axis is k.
    m = np.eye(4)
    m[:3, :3] = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]) @ np.diag([0.7, 0.8, 2.0])
    m[:3, 3] = [-30.0, 12.0, 5.0]
    parent = np.eye(4)
    parent[:3, 3] = [4.0, -6.0, 9.0]
    view = YELLOW.copy()
    view[:3, 3] = (parent @ m @ [11.2, 23.6, 3.0, 1.0])[:3]  # panned off the voxel grid
    axis = slice_axis_of_view(view, m, parent)
    point = point_on_slice(view, m, parent, axis, 17)
    assert np.allclose(world_to_ijk(point, m, parent)[0], [11.2, 23.6, 17.0])
    jumped = view.copy()
    jumped[:3, 3] = point
    assert slice_index_of_view(jumped, m, parent, (40, 50, 30), axis) == 17
    # only the view's position along its normal changes: the picture does not pan
    normal = view[:3, 2]
    offset = point - view[:3, 3]
    assert np.allclose(offset, normal * (normal @ offset))


def test_points_on_the_edge_inside_and_outside():
    dims = (40, 50, 12)
    assert inside(np.array([[-0.49, 0, 0], [39.49, 49.2, 11.4]]), dims).all()
    assert not inside(np.array([[-0.51, 0, 0]]), dims).any()
    assert not inside(np.array([[0, 0, 11.6]]), dims).any()


def test_markups_to_prompt_in_lps_volume():
    ijk_to_ras = lps_volume_ijk_to_ras()
    dims = (40, 50, 12)

    def ras(i, j, k):
        return (ijk_to_ras @ [i, j, k, 1.0])[:3]

    positive = np.array([ras(10, 20, 5), ras(3, 3, 9)])  # the second is on another slice
    negative = np.array([ras(12, 22, 5)])
    corners = np.array([ras(i, j, k) for i in (5, 15) for j in (8, 30) for k in (4.6, 5.4)])
    prompt = prompt_from_markups(positive, negative, corners, ijk_to_ras, None, dims, 2, 5)
    # slice along k: rows run along i, columns along j; x = j, y = i
    assert np.allclose(prompt.points, [[20, 10], [22, 12]])
    assert prompt.labels.tolist() == [1, 0]
    assert np.allclose(prompt.box, [8, 5, 30, 15])
    assert prompt_from_markups(positive, None, None, ijk_to_ras, None, dims, 2, 0) is None


def test_point_outside_the_volume_is_an_error():
    ijk_to_ras = lps_volume_ijk_to_ras()
    outside = (ijk_to_ras @ [45, 3, 2, 1.0])[:3]
    with pytest.raises(PromptError, match="outside the volume"):
        prompt_from_markups([outside], None, None, ijk_to_ras, None, (40, 50, 12), 2, 2)


def test_yellow_view_prompt_uses_j_and_k():
    ijk_to_ras = lps_volume_ijk_to_ras()
    point = (ijk_to_ras @ [7, 20, 4, 1.0])[:3]
    prompt = prompt_from_markups([point], None, None, ijk_to_ras, None, (40, 50, 12), 0, 7)
    assert np.allclose(prompt.points, [[4, 20]])  # rows along j, columns along k


def test_roi_corners_and_view_of_a_point():
    corners = roi_corners([0, 0, 0], [2, 4, 6])
    assert corners.shape == (8, 3) and np.allclose(corners.max(0), [1, 2, 3])
    red = RED.copy()
    red[:3, 3] = [0, 0, 10.0]
    views = {"Red": red, "Yellow": YELLOW, "Green": GREEN}
    assert view_containing([30.0, 40.0, 10.2], views, tolerance_mm=0.5) == "Red"
    assert view_containing([0.1, 40.0, 50.0], views, tolerance_mm=0.5) == "Yellow"
    assert view_containing([30.0, 40.0, 50.0], views, tolerance_mm=0.5) is None


def test_changed_slices_and_array_order():
    before = np.zeros((4, 5, 6), bool)
    after = before.copy()
    after[1, 2, 3] = after[2, 0, 5] = True
    assert changed_slices(before, after, 2) == [3, 5]
    assert changed_slices(before, after, 0) == [1, 2]
    kji = np.arange(24).reshape(2, 3, 4)
    assert ijk_volume_from_slicer_array(kji).shape == (4, 3, 2)
    assert np.array_equal(slicer_array_from_ijk_volume(ijk_volume_from_slicer_array(kji)), kji)


def test_module_file_compiles_and_uses_only_existing_slicer_util_functions():
    source = (MODULE_DIR / "SAMMed2D.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    compile(source, "SAMMed2D.py", "exec")
    known = {
        line.strip()
        for line in (Path(__file__).parent / "slicer_util_api.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if line.strip() and not line.startswith("#")
    }
    used = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "util"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "slicer"
        ):
            used.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            used.update(alias.name for alias in node.names)
    assert used, "expected slicer.util calls"
    assert used <= known, used - known
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"SAMMed2D", "SAMMed2DWidget", "SAMMed2DLogic", "SAMMed2DTest"} <= classes


def test_extension_layout():
    root = MODULE_DIR.parent
    cmake = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert f"set({key} " in cmake
    assert "project(SAMMed2D)" in cmake and (root / "LICENSE").exists()
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for resource in (
        "Resources/Icons/${MODULE_NAME}.png",
        "Resources/UI/${MODULE_NAME}.ui",
        "${MODULE_NAME}Lib/geometry.py",
        "WITH_GENERIC_TESTS",
    ):
        assert resource in module_cmake
    assert (MODULE_DIR / "Resources" / "Icons" / "SAMMed2D.png").stat().st_size > 0
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SAMMed2D.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    source = (MODULE_DIR / "SAMMed2D.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", source))
    assert used <= names, used - names
