"""Slicer-free parts of the SAMMed2D module: tested with pytest outside Slicer.

`parameters` and `background` need neither the engine nor VTK, so the module imports them
before the engine is on the path; the rest load on first use.
"""

from importlib import import_module

_WHERE = {
    "LOCAL_ONLY": "engines",
    "LocalEngine": "engines",
    "RemoteEngine": "engines",
    "make_engine": "engines",
    "ObliqueViewError": "geometry",
    "changed_slices": "geometry",
    "ijk_volume_from_slicer_array": "geometry",
    "inside": "geometry",
    "point_on_slice": "geometry",
    "prompt_from_markups": "geometry",
    "roi_corners": "geometry",
    "slice_axis_of_view": "geometry",
    "slice_index_of_view": "geometry",
    "slicer_array_from_ijk_volume": "geometry",
    "view_containing": "geometry",
    "world_to_ijk": "geometry",
    "world_to_ijk_matrix": "geometry",
    "PromptLog": "session",
    "object_segment": "session",
    "BackgroundRun": "background",
    "changed_range": "labelmap",
    "ijk_to_segmentation": "labelmap",
    "slab_image": "labelmap",
    "write_dicom_seg": "dicomexport",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
