"""A CT-like abdominal phantom with known organs, for demos and tests that must run offline.

Intensities are in Hounsfield units (int16) and the affine is RAS+ with 3 mm voxels, like
the TotalSegmentator example CT: array axes run toward the patient's right, anterior and
superior. Organs are smooth ellipsoids whose cross-sections grow and shrink from slice to
slice, so propagation has real work to do.
"""

from __future__ import annotations

import numpy as np

ORGANS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "aorta"}
# Mean HU of each organ in the portal-venous phase of a contrast-enhanced CT.
_HU = {1: 110, 2: 125, 3: 170, 4: 190}


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def ct_phantom(
    shape: tuple[int, int, int] = (112, 96, 24), seed: int = 0, spacing: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """(ct int16 HU, labels uint8, affine 4x4, {id: organ name}), voxel order (i, j, k)."""
    nx, ny, nz = shape
    grid = np.meshgrid(
        np.arange(nx, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nz, dtype=np.float32),
        indexing="ij",
    )
    x, y, z = (g / s for g, s in zip(grid, shape))  # 0..1 along R, A, S
    rel = (x, y, z)
    ct = np.full(shape, -1000.0, dtype=np.float32)  # air
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.5) / 0.40) ** 2 <= 1.0
    ct[body] = -90.0  # subcutaneous fat
    muscle = ((x - 0.5) / 0.40) ** 2 + ((y - 0.5) / 0.34) ** 2 <= 1.0
    ct[muscle] = -60.0  # intra-abdominal fat around the organs
    wall = muscle & ~(((x - 0.5) / 0.36) ** 2 + ((y - 0.5) / 0.30) ** 2 <= 1.0)
    ct[wall] = 45.0  # abdominal wall muscle
    spine = ((x - 0.5) / 0.07) ** 2 + ((y - 0.25) / 0.08) ** 2 <= 1.0
    ct[spine] = 500.0  # vertebral body
    labels = np.zeros(shape, dtype=np.uint8)
    # Patient's right is +x here; the liver is on the right, spleen and left kidney on the left.
    organs = {
        1: ((0.70, 0.55, 0.60), (0.20, 0.22, 0.55)),
        2: ((0.26, 0.42, 0.72), (0.10, 0.13, 0.35)),
        3: ((0.33, 0.30, 0.30), (0.07, 0.09, 0.28)),
        4: ((0.46, 0.38, 0.50), (0.045, 0.05, 0.80)),
    }
    for oid, (centre, radii) in organs.items():
        inside = _ellipsoid(rel, centre, radii) & muscle & ~wall & (labels == 0)
        labels[inside] = oid
        ct[inside] = _HU[oid]
    rng = np.random.default_rng(seed)
    ct += rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-nx * spacing / 2, -ny * spacing / 2, 0.0]
    return np.round(ct).astype(np.int16), labels, affine, dict(ORGANS)
