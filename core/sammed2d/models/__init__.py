"""SAM-family networks in plain PyTorch, the model registry and safe checkpoint loading."""

from .checkpoint import read_state_dict
from .registry import (
    DEFAULT_MODEL,
    SPECS,
    ModelSpec,
    SamModel,
    build_model,
    load_model,
    pick_device,
    weights_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "SPECS",
    "ModelSpec",
    "SamModel",
    "build_model",
    "load_model",
    "pick_device",
    "read_state_dict",
    "weights_path",
]
