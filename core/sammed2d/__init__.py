"""sammed2d: promptable segmentation of medical images with SAM-Med2D and its relatives."""

__version__ = "0.1.0"

from .cache import EmbeddingCache  # noqa: E402
from .errors import SamMed2DError  # noqa: E402
from .models import SPECS, build_model, load_model  # noqa: E402
from .predictor import Predictor, embed_slices  # noqa: E402

__all__ = [
    "SPECS",
    "EmbeddingCache",
    "Predictor",
    "SamMed2DError",
    "__version__",
    "build_model",
    "embed_slices",
    "load_model",
]
