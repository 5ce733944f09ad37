"""Slicer-free parts of the SAMMed2D module: tested with pytest outside Slicer."""

from .engines import LocalEngine, RemoteEngine, make_engine
from .geometry import (
    ObliqueViewError,
    changed_slices,
    ijk_volume_from_slicer_array,
    inside,
    prompt_from_markups,
    roi_corners,
    slice_axis_of_view,
    slice_index_of_view,
    slicer_array_from_ijk_volume,
    view_containing,
    world_to_ijk,
    world_to_ijk_matrix,
)
from .session import PromptLog

__all__ = [
    "LocalEngine",
    "ObliqueViewError",
    "PromptLog",
    "RemoteEngine",
    "changed_slices",
    "ijk_volume_from_slicer_array",
    "inside",
    "make_engine",
    "prompt_from_markups",
    "roi_corners",
    "view_containing",
    "slice_axis_of_view",
    "slice_index_of_view",
    "slicer_array_from_ijk_volume",
    "world_to_ijk",
    "world_to_ijk_matrix",
]
