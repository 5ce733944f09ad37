"""Medical intensities to the 8-bit RGB images the models were trained on.

A preset gives an intensity range [lo, hi] that maps linearly onto 0..255. For a volume the
range is computed once for the whole volume (`intensity_range(volume, preset)`) and then
applied to every slice, so neighbouring slices look alike to the model.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ImageError
from .orientation import SliceView, slice_of, view_pixel_spacing

# (width, level) in Hounsfield units.
CT_WINDOWS = {
    "abdomen": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
PRESETS = ("auto", *CT_WINDOWS, "percentile", "minmax", "none")
# The windows `auto` may give one object of a CT (brain only when asked: its 80 HU would
# clip every organ that is not brain).
OBJECT_WINDOWS = ("abdomen", "lung", "bone")
# A CT object's window is read from its first box less this many mm on each side, where the
# box is wider and taller than twice that: people draw boxes a few mm loose, and the rim of a
# loose box around a small structure in a ring of bone (the spinal cord in its canal) is
# bone, which gave it the bone window and lost it. 6 mm is two of the example CT's 3 mm
# pixels; leave-one-structure-out over boxes drawn 0 to 6 mm loose picks it (README,
# Performance, "A CT object's window").
WINDOW_INSET_MM = 6.0


def object_window(hu: np.ndarray) -> str:
    """The CT window for an object whose first box holds the intensities `hu` (HU): the
    narrowest of the soft-tissue, lung and bone windows that holds the box's middle 80 %
    (10th to 90th percentile), else the one that holds most of the box. A lung lobe's box
    is mostly air and gets the lung window; a vertebra's reaches into bone and gets the
    bone window; organs get the soft-tissue window."""
    hu = np.asarray(hu, dtype=np.float64).ravel()
    hu = hu[np.isfinite(hu)]
    if hu.size == 0:
        return "abdomen"
    lo, hi = np.percentile(hu, [10, 90])
    ranked = sorted(OBJECT_WINDOWS, key=lambda name: CT_WINDOWS[name][0])
    for name in ranked:
        width, level = CT_WINDOWS[name]
        if level - width / 2 <= lo and hi <= level + width / 2:
            return name

    def held(name):
        width, level = CT_WINDOWS[name]
        return np.mean((hu >= level - width / 2) & (hu <= level + width / 2))

    return max(ranked, key=held)


# A window of its own for an object of a scan without standard windows (an MR): the
# BOX_PERCENTILES of the grey levels in its first box, widened on each side by
# BOX_WIDEN times their spread (benchmarks/choose_defaults.py --grid box-window).
BOX_PERCENTILES = (1.0, 99.0)
BOX_WIDEN = 1.0
# What a window may be, for error messages.
WINDOW_WORDS = f"one of {', '.join(PRESETS)}, or W<width>/L<level>"
_WINDOW = re.compile(r"^W(?P<width>[0-9.eE+-]+)/L(?P<level>[0-9.eE+-]+)$")


def window_name(lo: float, hi: float) -> str:
    """[lo, hi] as a window's name, "W<width>/L<level>", as radiologists write windows;
    `intensity_range` reads it back (to four significant digits)."""
    return f"W{hi - lo:.4g}/L{(lo + hi) / 2:.4g}"


def parse_window(name) -> tuple[float, float] | None:
    """The [lo, hi] of a "W<width>/L<level>" window name, or None for any other string."""
    match = _WINDOW.match(name) if isinstance(name, str) else None
    if match is None:
        return None
    try:
        width, level = float(match["width"]), float(match["level"])
    except ValueError:
        return None
    if not (np.isfinite(width) and np.isfinite(level) and width > 0):
        return None
    return level - width / 2, level + width / 2


def is_window(name) -> bool:
    """A preset's name or a "W<width>/L<level>" window."""
    return name in PRESETS or parse_window(name) is not None


def box_window(values: np.ndarray) -> str | None:
    """The window an object of a scan without standard windows gets from the grey levels in
    its first box: the box's 1st to 99th percentiles, widened on each side by as much again.
    The volume's percentile window spreads a scan's whole range over 256 grey levels, and a
    structure that differs from its neighbours by a few percent of it is nearly flat to the
    model; this window gives the box's own range most of them and keeps its edges off the
    clip. None where the box is flat (nothing to spread)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, BOX_PERCENTILES)
    if not hi > lo:
        return None
    spread = hi - lo
    return window_name(lo - BOX_WIDEN * spread, hi + BOX_WIDEN * spread)


def resolve_preset(data: np.ndarray, preset: str = "auto") -> str:
    """`auto`: none for 8-bit data, the abdomen window for data that looks like CT in HU
    (reaching below -500, where air lies), else percentiles (the MR default).

    Floating point counts as HU as integers do: a CT stored as unsigned integers with a
    rescale intercept (-1024), as converters often write it, reads as floats, and MR
    magnitudes never reach -500."""
    if not is_window(preset):
        raise ImageError(f"intensity preset {preset!r}: expected {WINDOW_WORDS}")
    if preset != "auto":
        return preset
    if data.dtype == np.uint8:
        return "none"
    signed = np.issubdtype(data.dtype, np.signedinteger) or np.issubdtype(data.dtype, np.floating)
    if signed and data.size:
        # Every click asks this of the whole volume: a strided sample (a view, in the array's
        # own memory order) settles a CT, and only a volume without air in it is read whole
        # (fmin passes over NaN).
        flat = np.ravel(data, order="K")
        if (flat[:: max(1, flat.size // 65536)] <= -500).any() or np.fmin.reduce(flat) <= -500:
            return "abdomen"
    return "percentile"


def prompt_window(
    volume: np.ndarray, axis: int, index: int, prompt, own=None, affine=None
) -> str | None:
    """`auto`: the window this prompt's box (or mask; a `SlicePrompt` on slice `index` along
    `axis`, in raw pixels) asks for where it is not the volume's own. On a CT, one of the
    standard windows (`object_window`) from the box less WINDOW_INSET_MM on each side
    (`affine`, the volume's voxel-to-mm matrix, gives the pixels' size; without it the whole
    box); on a scan that gets the percentile window (an MR), a window from the box's own
    grey levels (`box_window`). None for points only, a soft-tissue box on a CT, a flat box,
    or 8-bit data. `own` is `resolve_preset(volume, "auto")` when the caller has it (it
    reads the whole volume)."""
    own = own or resolve_preset(volume, "auto")
    if own not in CT_WINDOWS and own != "percentile":
        return None
    raw = slice_of(volume, index, axis)
    if prompt.mask is not None:
        mask = np.asarray(prompt.mask, bool)
        if mask.shape != raw.shape or not mask.any():
            return None
        if own in CT_WINDOWS:
            values = raw[mask]
        else:  # the mask's box, as a box prompt gives it: the object and its surroundings
            from .prompts import box_from_mask

            x0, y0, x1, y1 = box_from_mask(mask).astype(int)
            values = raw[y0:y1, x0:x1]
    elif prompt.box is not None:
        from .prompts import check_boxes

        x0, y0, x1, y1 = check_boxes(prompt.box, raw.shape)[0]
        if own in CT_WINDOWS:
            x0, y0, x1, y1 = _inset(x0, y0, x1, y1, affine, axis)
        values = raw[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1]
    else:
        return None
    window = object_window(values) if own in CT_WINDOWS else box_window(values)
    return None if window == own else window


def _inset(x0, y0, x1, y1, affine, axis: int):
    """A box (raw pixels of a slice along `axis`) less WINDOW_INSET_MM on each side, where
    it is wider and taller than twice that; as it is without a usable `affine`."""
    spacing = view_pixel_spacing(affine, axis % 3, SliceView())  # the raw slice's mm
    if spacing is None:
        return x0, y0, x1, y1
    dx, dy = WINDOW_INSET_MM / spacing[1], WINDOW_INSET_MM / spacing[0]
    if x1 - x0 <= 2 * dx or y1 - y0 <= 2 * dy:
        return x0, y0, x1, y1
    return x0 + dx, y0 + dy, x1 - dx, y1 - dy


def auto_object_window(volume: np.ndarray, axis: int, index: int, prompt, affine=None) -> str:
    """The window an object prompted with `prompt` gets under `auto`: the one its box asks
    for on a CT, else the volume's own (what the front ends show and keep per object).
    `affine`: the volume's voxel-to-mm matrix (see `prompt_window`)."""
    own = resolve_preset(volume, "auto")
    return prompt_window(volume, axis, index, prompt, own, affine) or own


def intensity_range(data: np.ndarray, preset: str = "auto") -> tuple[float, float]:
    """The [lo, hi] that `preset` maps to 0..255 for this image or whole volume."""
    data = np.asarray(data)
    preset = resolve_preset(data, preset)
    if preset in CT_WINDOWS:
        width, level = CT_WINDOWS[preset]
        return level - width / 2, level + width / 2
    custom = parse_window(preset)
    if custom is not None:
        return custom
    if preset == "none":
        return 0.0, 255.0
    # The voxels in memory order (a view for a C or Fortran volume): napari's (k, j, i)
    # layer and the core's (i, j, k) array of one scan then sample the same voxels, and a
    # Fortran volume is not copied into C order first (1.0 s for a 512 x 512 x 300 MR, per
    # click in Slicer, which does not keep the range).
    flat = np.ravel(data, order="K")
    floating = data.dtype.kind == "f"
    if preset == "percentile":
        # A strided sample keeps this fast on large volumes; percentiles barely move.
        sample = flat[:: max(1, flat.size // 2_000_000)]
        if floating:
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:  # the sample missed the few finite voxels there are
                sample = flat[np.isfinite(flat)]
        if sample.size == 0:
            raise ImageError("image has no finite values (all NaN or inf)")
        lo, hi = np.percentile(sample, [0.5, 99.5])
    else:
        finite = flat[np.isfinite(flat)] if floating else flat
        if finite.size == 0:
            raise ImageError("image has no finite values (all NaN or inf)")
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)


def to_uint8(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto 0..255 with clipping; NaN and -inf give 0, +inf 255."""
    data = np.asarray(data)
    if data.dtype == np.uint8 and lo == 0.0 and hi == 255.0:
        return data
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (data.astype(np.float32) - np.float32(lo)) * np.float32(scale)
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) 8-bit image -> (H, W, 3)."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    raise ImageError(f"image of shape {image.shape}: expected (H, W) grayscale or (H, W, 3) RGB")


def prepare_rgb(
    image: np.ndarray,
    preset: str = "auto",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Any 2D medical image to (H, W, 3) uint8. `value_range` (from `intensity_range` of the
    whole volume) overrides the preset's own computation on this one image."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"image of shape {image.shape}: expected (H, W) or (H, W, 3); "
            "pass one slice of a volume, not the volume"
        )
    if min(image.shape[:2]) < 2:
        raise ImageError(f"image of shape {image.shape}: too small to segment")
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ImageError(f"image of dtype {image.dtype}: expected integer or float intensities")
    lo, hi = value_range if value_range is not None else intensity_range(image, preset)
    return to_rgb(to_uint8(image, lo, hi))
