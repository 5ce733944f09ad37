"""What the module's parameter node holds, written down without Slicer.

SAMMed2D.py declares the node with Slicer's `parameterNodeWrapper`; the names, choices and
defaults come from here so that a test outside Slicer can hold the declaration, the .ui
file's `SlicerParameterName` bindings and the engine's own choices to one list.

The server URL and API key are not parameters: they belong to this computer (QSettings),
and a key must never be saved into a scene file someone may share.
"""

from __future__ import annotations

ENGINES = ("local", "remote")
# sammed2d.intensity.PRESETS (a test keeps the two in step; the engine is not importable
# before the module has put it on the path).
PRESETS = ("auto", "abdomen", "lung", "bone", "brain", "percentile", "minmax", "none")
# sammed2d.choices.PRECISIONS (kept in step by the same test): fp32 is the reference; bf16
# is faster on CPUs with AVX512-BF16 or AMX and on CUDA, and refused in one line elsewhere.
PRECISIONS = ("fp32", "bf16")
MAX_OBJECT_ID = 255

# Node references: parameter -> MRML class.
NODES = {
    "volume": "vtkMRMLScalarVolumeNode",
    "segmentation": "vtkMRMLSegmentationNode",
    "positive": "vtkMRMLMarkupsFiducialNode",
    "negative": "vtkMRMLMarkupsFiducialNode",
    "roi": "vtkMRMLMarkupsROINode",
}

# Plain settings: parameter -> default.
DEFAULTS = {
    "engine": "local",
    "model": "litemedsam",
    "precision": "fp32",
    "preset": "auto",
    "objectId": 1,
    "objectName": "",
}


def object_name(object_id: int, name: str = "") -> str:
    """The segment an object writes to: its given name, or "SAM object N"."""
    return name.strip() or f"SAM object {int(object_id)}"
