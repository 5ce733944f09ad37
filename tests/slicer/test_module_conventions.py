"""The module as Slicer reads it, checked outside Slicer: the parameter node's declaration
against the parameter list, the .ui's bindings, and Slicer's own C++ surfaces it calls."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from xml.etree import ElementTree

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from SAMMed2DLib import parameters  # noqa: E402

SOURCE = (MODULE_DIR / "SAMMed2D.py").read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)


def _class(name):
    return next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == name)


def _declared():
    """field -> (annotation source, default source or None) of the parameter node class."""
    node = _class("SAMMed2DParameterNode")
    assert [ast.unparse(d) for d in node.decorator_list] == ["parameterNodeWrapper"]
    out = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign):
            default = ast.unparse(item.value) if item.value is not None else None
            out[item.target.id] = (ast.unparse(item.annotation), default)
    return out


def test_parameter_node_declares_every_parameter_with_its_default():
    declared = _declared()
    assert set(declared) == set(parameters.NODES) | set(parameters.DEFAULTS)
    for name, cls in parameters.NODES.items():
        assert declared[name] == (cls, None)
    for name in parameters.DEFAULTS:
        assert declared[name][1] == f"DEFAULTS[{name!r}]"
    assert declared["engine"][0] == "Annotated[str, Choice(list(ENGINES))]"
    assert declared["preset"][0] == "Annotated[str, Choice(list(PRESETS))]"
    assert declared["precision"][0] == "Annotated[str, Choice(list(PRECISIONS))]"
    assert declared["objectId"][0] == "Annotated[int, WithinRange(1, MAX_OBJECT_ID)]"
    # The server's key is a secret: never a parameter saved into a scene.
    assert not {"apiKey", "key", "server"} & set(declared)


def test_parameter_defaults_are_valid_choices_and_follow_the_engine():
    from sammed2d.choices import PRECISIONS
    from sammed2d.intensity import PRESETS

    assert parameters.PRESETS == PRESETS
    assert parameters.PRECISIONS == PRECISIONS
    assert parameters.DEFAULTS["precision"] == "fp32"
    assert parameters.DEFAULTS["preset"] in PRESETS
    assert parameters.DEFAULTS["engine"] in parameters.ENGINES == ("local", "remote")
    assert 1 <= parameters.DEFAULTS["objectId"] <= parameters.MAX_OBJECT_ID
    assert parameters.object_name(3) == "SAM object 3"
    assert parameters.object_name(3, "  liver ") == "liver"


def test_every_parameter_is_bound_to_a_widget_that_can_show_it():
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "SAMMed2D.ui")
    bound = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget
    declared = _declared()
    assert set(bound) == set(declared)
    # The widget classes Slicer's GUI connectors accept for each type.
    for name, widget in bound.items():
        cls = widget.get("class")
        if name in parameters.NODES:
            assert cls == "qMRMLNodeComboBox"
            types = [s.text for s in widget.iter("string")][:1]
            assert types == [parameters.NODES[name]], name
        elif "Choice(" in declared[name][0]:
            assert cls == "QComboBox", name
        elif isinstance(parameters.DEFAULTS[name], int):
            assert cls == "QSpinBox", name
        else:
            assert cls == "QLineEdit", name
    # Slicer fills a Choice combo box itself: the module must not add items too.
    for combo in ("presetCombo", "engineCombo", "precisionCombo"):
        assert f"{combo}.addItems" not in SOURCE


def _method_calls(cls_name):
    calls = set()
    for node in ast.walk(_class(cls_name)):
        if isinstance(node, ast.Attribute):
            calls.add(node.attr)
    return calls


def test_scene_close_and_load_are_handled_and_the_background_run_is_polled():
    widget = _class("SAMMed2DWidget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert {"onSceneStartClose", "onSceneEndClose", "onSceneEndImport", "enter", "exit"} <= methods
    setup = ast.unparse(next(n for n in widget.body if getattr(n, "name", "") == "setup"))
    for event in ("StartCloseEvent", "EndCloseEvent", "EndImportEvent"):
        assert f"slicer.mrmlScene.{event}" in setup
    start_close = ast.unparse(
        next(n for n in widget.body if getattr(n, "name", "") == "onSceneStartClose")
    )
    assert "_abandonRun" in start_close and "logic.reset" in start_close
    # No model work inside the GUI thread's event processing loop any more.
    assert "processEvents" not in ast.unparse(_class("SAMMed2DLogic"))


# Slicer C++ methods the Logic calls, as declared in Slicer's headers (Slicer/Slicer at
# 583e9b37d50e): vtkSlicerSegmentationsModuleLogic.h, qMRMLSegmentEditorWidget.h,
# vtkSegment.h, vtkOrientedImageData.h and Modules/Scripted/SegmentEditor/SegmentEditor.py.
SLICER_METHODS = {
    "SetBinaryLabelmapToSegment",
    "MODE_REPLACE",
    "saveStateForUndo",
    "undo",
    "segmentationNode",
    "setSegmentationNode",
    "sourceVolumeNode",
    "setSourceVolumeNode",
    "selectParameterNode",
    "SetTerminology",
    "SetImageToWorldMatrix",
}


def test_the_logic_writes_through_slicers_own_segment_and_undo_calls():
    used = _method_calls("SAMMed2DLogic")
    assert SLICER_METHODS <= used, SLICER_METHODS - used
    logic = ast.unparse(_class("SAMMed2DLogic"))
    # Only the changed slab is written: no whole-volume write-back remains.
    assert "updateSegmentBinaryLabelmapFromArray" not in logic
    assert "undoStack" not in logic


# Names the module takes from the `slicer` package itself, each present in Slicer (Slicer/
# Slicer at 583e9b37d50e): the application objects and the wrapped C++ classes it uses.
SLICER_NAMES = {
    "app",
    "dicomDatabase",
    "modules",
    "mrmlScene",
    "util",
    "vtkMRMLTransformNode",
    "vtkOrientedImageData",
    "vtkSlicerSegmentationsModuleLogic",
}
SLICER_IMPORTS = {
    "vtkMRMLMarkupsFiducialNode",
    "vtkMRMLMarkupsROINode",
    "vtkMRMLScalarVolumeNode",
    "vtkMRMLSegmentationNode",
}


def test_the_module_uses_only_names_slicer_has():
    used = {
        n.attr
        for n in ast.walk(TREE)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "slicer"
    }
    assert used <= SLICER_NAMES, used - SLICER_NAMES
    imported = {
        alias.name
        for n in ast.walk(TREE)
        if isinstance(n, ast.ImportFrom) and n.module == "slicer"
        for alias in n.names
    }
    assert imported == SLICER_IMPORTS
    wrapper = {
        alias.name
        for n in ast.walk(TREE)
        if isinstance(n, ast.ImportFrom) and n.module == "slicer.parameterNodeWrapper"
        for alias in n.names
    }
    # Exported by slicer.parameterNodeWrapper (wrapper.py, validators.py).
    assert wrapper <= {"parameterNodeWrapper", "Choice", "WithinRange", "Default"}
