"""What each label value means: a name, a display colour and a coded anatomy concept.

A label volume alone says "1, 2, 3". Every format we write carries this table with it:
the NIfTI sidecar (`x.nii.gz` + `x.json`), Slicer's `.seg.nrrd` header and DICOM SEG's
segment descriptions, so names and colours survive the trip into Slicer, OHIF or PACS.

Coded concepts are SNOMED CT, as DICOM SEG and Slicer's terminologies expect. Names are
matched after folding case and separators, so "Kidney left", "kidney_left" and
"kidney-left" (TotalSegmentator's style) find the same entry; anything unknown is coded
"Tissue", which is always valid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import VolumeIOError

RGB = tuple[int, int, int]

ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
TISSUE = ("85756007", "Tissue")

# name -> (SNOMED CT code, code meaning, display colour). Colours follow the conventions of
# Slicer's generic anatomy colours: organs in their familiar tints, arteries red, veins blue.
ANATOMY: dict[str, tuple[str, str, RGB]] = {
    "liver": ("10200004", "Liver", (221, 130, 101)),
    "spleen": ("78961009", "Spleen", (157, 108, 162)),
    "kidney": ("64033007", "Kidney", (185, 102, 83)),
    "kidney_left": ("18639004", "Left kidney", (185, 102, 83)),
    "kidney_right": ("9846003", "Right kidney", (185, 102, 83)),
    "gallbladder": ("28231008", "Gallbladder", (139, 150, 98)),
    "stomach": ("69695003", "Stomach", (216, 132, 105)),
    "pancreas": ("15776009", "Pancreas", (249, 180, 111)),
    "duodenum": ("38848004", "Duodenum", (255, 253, 229)),
    "small_bowel": ("30315005", "Small intestine", (205, 167, 142)),
    "small_intestine": ("30315005", "Small intestine", (205, 167, 142)),
    "colon": ("71854001", "Colon", (204, 168, 143)),
    "esophagus": ("32849002", "Esophagus", (211, 171, 143)),
    "trachea": ("44567001", "Trachea", (182, 228, 255)),
    "aorta": ("15825003", "Aorta", (224, 97, 76)),
    "inferior_vena_cava": ("64131007", "Inferior vena cava", (0, 151, 206)),
    "portal_vein_and_splenic_vein": (
        "110765007",
        "Portal vein and splenic vein",
        (0, 151, 206),
    ),
    "pulmonary_artery": ("81040000", "Pulmonary artery", (0, 122, 171)),
    "adrenal_gland": ("23451007", "Adrenal gland", (249, 186, 150)),
    "adrenal_gland_left": ("12003004", "Left adrenal gland", (249, 186, 150)),
    "adrenal_gland_right": ("29392005", "Right adrenal gland", (249, 186, 150)),
    "lung": ("39607008", "Lung", (197, 165, 145)),
    "lung_upper_lobe_left": ("44714003", "Upper lobe of left lung", (197, 165, 145)),
    "lung_lower_lobe_left": ("41224006", "Lower lobe of left lung", (197, 165, 145)),
    "lung_upper_lobe_right": ("42400003", "Upper lobe of right lung", (197, 165, 145)),
    "lung_middle_lobe_right": ("72481006", "Middle lobe of right lung", (197, 165, 145)),
    "lung_lower_lobe_right": ("266005", "Lower lobe of right lung", (197, 165, 145)),
    "heart": ("80891009", "Heart", (206, 110, 84)),
    "brain": ("12738006", "Brain", (250, 250, 225)),
    "spinal_cord": ("2748008", "Spinal cord", (244, 214, 49)),
    "urinary_bladder": ("89837001", "Urinary bladder", (222, 154, 132)),
    "prostate": ("41216001", "Prostate", (230, 158, 140)),
    "iliopsoas": ("68455001", "Iliopsoas muscle", (192, 104, 88)),
    "iliopsoas_left": ("68455001", "Iliopsoas muscle", (192, 104, 88)),
    "iliopsoas_right": ("68455001", "Iliopsoas muscle", (192, 104, 88)),
    "vertebrae_t12": ("23215003", "T12 vertebra", (241, 214, 145)),
    "vertebrae_l1": ("66794005", "L1 vertebra", (241, 214, 145)),
    "vertebrae_l2": ("14293000", "L2 vertebra", (241, 214, 145)),
    "vertebrae_l3": ("36470004", "L3 vertebra", (241, 214, 145)),
    "vertebrae_l4": ("11994002", "L4 vertebra", (241, 214, 145)),
    "vertebrae_l5": ("49668003", "L5 vertebra", (241, 214, 145)),
}

# For names not in the table: distinct, saturated colours, cycled by label value.
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


@dataclass(frozen=True)
class Segment:
    """One label value: its id in the label volume, a name and an sRGB display colour."""

    id: int
    name: str
    color: RGB

    @property
    def code(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(category, type) as (SNOMED CT code, meaning) pairs."""
        entry = ANATOMY.get(name_key(self.name))
        if entry is None:
            return TISSUE, TISSUE
        return ANATOMICAL_STRUCTURE, (entry[0], entry[1])


def name_key(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", name.strip().lower())


def default_segment(label: int, name: str | None = None) -> Segment:
    name = name or f"Segment_{label}"
    entry = ANATOMY.get(name_key(name))
    color = entry[2] if entry else PALETTE[(label - 1) % len(PALETTE)]
    return Segment(int(label), name, color)


def segments_for(
    ids, known: dict[int, Segment] | None = None, names: dict[int, str] | None = None
) -> list[Segment]:
    """A Segment for every id: from `known` where given, else named from `names` (or
    "Segment_N") with the anatomy table's colour or the palette's."""
    known, names = known or {}, names or {}
    return [
        known[i] if i in known else default_segment(int(i), names.get(int(i)))
        for i in sorted(int(i) for i in ids)
    ]


def parse_color(value, where: str) -> RGB:
    if isinstance(value, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        return tuple(int(value[k : k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, (int, float)) for v in value)
    ):
        if all(0 <= v <= 1 for v in value) and any(isinstance(v, float) for v in value):
            return tuple(round(float(v) * 255) for v in value)  # type: ignore[return-value]
        if all(0 <= v <= 255 for v in value):
            return tuple(int(round(v)) for v in value)  # type: ignore[return-value]
    raise VolumeIOError(f"{where}: colour {value!r} is not [r, g, b] (0-255) nor #rrggbb")


def segments_from_json(data, where: str) -> dict[int, Segment]:
    """{"1": "liver"} (the older labels.json) or {"1": {"name": "liver", "color": [r, g, b]}}."""
    if isinstance(data, dict) and isinstance(data.get("segments"), dict):
        data = data["segments"]
    if not isinstance(data, dict):
        raise VolumeIOError(f"{where}: expected an object mapping label values to names")
    out = {}
    for key, value in data.items():
        try:
            label = int(key)
        except ValueError:
            raise VolumeIOError(f"{where}: key {key!r} is not a label value") from None
        if label <= 0:
            continue  # background needs no entry
        if isinstance(value, str):
            out[label] = default_segment(label, value)
        elif isinstance(value, dict):
            seg = default_segment(label, str(value.get("name") or ""))
            if "color" in value:
                seg = Segment(label, seg.name, parse_color(value["color"], where))
            out[label] = seg
        else:
            raise VolumeIOError(f"{where}: label {key}: expected a name or {{name, color}}")
    return out


def segments_to_json(segments) -> dict:
    return {"segments": {str(s.id): {"name": s.name, "color": list(s.color)} for s in segments}}


def sidecar_path(path: str | Path) -> Path:
    """`x.nii.gz` -> `x.json`, `x.nrrd` -> `x.json`."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def read_sidecar(path: str | Path) -> dict[int, Segment]:
    """Segments described beside a label file: its own `x.json`, else `labels.json` in the
    same folder (the layout of the shared data and of earlier releases); {} if neither."""
    for candidate in (sidecar_path(path), Path(path).with_name("labels.json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise VolumeIOError(f"{candidate}: malformed JSON ({exc})") from None
            return segments_from_json(data, str(candidate))
    return {}
