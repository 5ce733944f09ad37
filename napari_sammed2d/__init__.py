"""napari plugin for promptable segmentation with SAM-Med2D and its relatives."""

__version__ = "0.1.0"
