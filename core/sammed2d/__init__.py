"""sammed2d: promptable segmentation of medical images with SAM-Med2D and its relatives.

The engine's names load on first use, so that the parts a remote client needs (`remote`,
`objects`, `io`, the label formats) import without torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "EmbeddingCache": ".cache",
    "SamMed2DError": ".errors",
    "SPECS": ".models",
    "build_model": ".models",
    "load_model": ".models",
    "Predictor": ".predictor",
    "embed_slices": ".predictor",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
