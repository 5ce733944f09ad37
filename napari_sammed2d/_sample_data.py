"""Sample data: a phantom that works offline, and a real CT for users who are online."""

from __future__ import annotations

import numpy as np

from sammed2d.io import Volume
from sammed2d.phantom import ct_phantom

from ._io import LAYER_ORDER, layer_meta, volume_to_layer_data

# The TotalSegmentator example CT at a fixed release, so its content cannot change.
ABDOMEN_CT_URL = (
    "https://github.com/wasserth/TotalSegmentator/raw/v2.8.0/tests/reference_files/"
    "example_ct_sm.nii.gz"
)
# pooch checks this SHA-256 after download; set from the pinned release file.
ABDOMEN_CT_SHA256 = None


def phantom():
    ct, labels, affine, names = ct_phantom()
    meta = {"sammed2d": layer_meta(Volume(ct, affine), "phantom")}
    scale = (3.0, 3.0, 3.0)
    return [
        (
            np.transpose(ct, LAYER_ORDER),
            {
                "name": "phantom CT",
                "scale": scale,
                "metadata": meta,
                "contrast_limits": (-160, 240),
            },
            "image",
        ),
        (
            np.transpose(labels, LAYER_ORDER),
            {"name": "phantom organs (truth)", "scale": scale, "visible": False, "metadata": meta},
            "labels",
        ),
    ]


def abdomen_ct():
    import pooch

    path = pooch.retrieve(ABDOMEN_CT_URL, known_hash=ABDOMEN_CT_SHA256, progressbar=True)
    return volume_to_layer_data(path)
