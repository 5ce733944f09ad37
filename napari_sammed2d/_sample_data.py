"""Sample data: a phantom that works offline, and a real CT for users who are online."""

from __future__ import annotations

import numpy as np

from sammed2d.errors import SamMed2DError
from sammed2d.io import Volume
from sammed2d.phantom import ct_phantom

from ._io import LAYER_ORDER, layer_meta, volume_to_layer_data

# The TotalSegmentator example CT at a fixed release, so its content cannot change.
ABDOMEN_CT_URL = (
    "https://github.com/wasserth/TotalSegmentator/raw/v2.8.0/tests/reference_files/"
    "example_ct_sm.nii.gz"
)
# SHA-256 of that file (git blob ec5668e1 at the tag); pooch refuses a download that differs.
ABDOMEN_CT_SHA256 = "sha256:e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb"


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

    try:
        path = pooch.retrieve(
            ABDOMEN_CT_URL,
            known_hash=ABDOMEN_CT_SHA256,
            path=pooch.os_cache("napari-sammed2d"),
            progressbar=True,
        )
    except (OSError, ValueError) as exc:
        # requests' ConnectionError is an OSError; a checksum mismatch is a ValueError.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SamMed2DError(
            f"the example CT could not be downloaded from {ABDOMEN_CT_URL.split('/')[2]} "
            f"(is the network reachable?): {reason}"
        ) from None
    layers = volume_to_layer_data(path)
    for _data, kwargs, _kind in layers:
        kwargs["name"] = "abdomen CT (TotalSegmentator example)"
        kwargs.setdefault("contrast_limits", (-160, 240))
    return layers
