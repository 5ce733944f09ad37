"""Object sizes (volume in mL, longest axial diameter in mm) on a clinical-size volume.

    python benchmarks/measure.py

The fourteen structures of the TotalSegmentator example CT (../shared/data/abdomen_ct),
each voxel repeated 4 times in-plane and the slices stacked 10 times (488 x 404 x 300,
held in Fortran order as a DICOM series or NIfTI is read): how long `object_sizes` takes
for all of them, as `sammed2d measure` and napari's Measure compute them (median of 3),
and how long `compare` takes for them against themselves moved one voxel.
Before that, the fourteen as they are beside SimpleITK's LabelShapeStatisticsImageFilter
on the same file: its physical size (mL) and its Feret diameter on the slice where ours is
longest (ITK's is taken between pixel centres, ours between the pixels' outer corners).
And `compare`'s surface distances beside MONAI's (where MONAI is installed; it is not a
dependency): the fourteen against themselves moved one voxel along each axis in turn (all fourteen
checked, three printed per axis).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sammed2d.io import read_volume
from sammed2d.measure import agreements, object_sizes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def beside_itk(path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    whole = sitk.LabelShapeStatisticsImageFilter()
    whole.Execute(image)
    labels = read_volume(path)
    print("id  mL ours / ITK        diameter mm ours / ITK (pixel centres)")
    for size in object_sizes(labels.array, labels.affine):
        flat = sitk.LabelShapeStatisticsImageFilter()
        flat.ComputeFeretDiameterOn()
        flat.Execute(image[:, :, size.diameter_slice])
        print(
            f"{size.id:2d}  {size.volume_ml:8.3f} / {whole.GetPhysicalSize(size.id) / 1000:8.3f}"
            f"   {size.diameter_mm:6.1f} / {flat.GetFeretDiameter(size.id):6.1f}"
        )


def beside_monai(path: Path) -> None:
    try:
        import torch
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    except ImportError:
        print("MONAI not installed: compare's distances not checked against it")
        return
    labels = read_volume(path)
    spacing = tuple(float(v) for v in np.linalg.norm(labels.affine[:3, :3], axis=0))
    print("id  HD95 mm ours / MONAI   mean surface distance mm ours / MONAI (moved along i, j, k)")
    for axis in range(3):
        moved = np.zeros_like(labels.array)  # one voxel on, the first slab left empty
        moved[(slice(None),) * axis + (slice(1, None),)] = np.take(
            labels.array, range(labels.array.shape[axis] - 1), axis=axis
        )
        for item in agreements(labels.array, moved, labels.affine):
            a = torch.from_numpy(labels.array == item.id)[None, None]
            b = torch.from_numpy(moved == item.id)[None, None]
            hd = compute_hausdorff_distance(a, b, percentile=95, spacing=spacing).item()
            asd = compute_average_surface_distance(a, b, symmetric=True, spacing=spacing).item()
            if item.id in (1, 7, 11):  # three of the fourteen per axis keep the lines short
                print(
                    f"{item.id:2d} {'ijk'[axis]}  {item.hd95_mm:5.2f} / {hd:5.2f}"
                    f"           {item.mean_surface_mm:5.3f} / {asd:5.3f}"
                )
            # MONAI works in float32: equal to its rounding
            assert np.isclose(item.hd95_mm, hd, rtol=1e-5) and np.isclose(
                item.mean_surface_mm, asd, rtol=1e-5
            ), (item, hd, asd)


def main() -> int:
    beside_itk(SHARED / "abdomen_ct" / "structures.nii.gz")
    beside_monai(SHARED / "abdomen_ct" / "structures.nii.gz")
    labels = read_volume(SHARED / "abdomen_ct" / "structures.nii.gz")
    big = np.repeat(np.repeat(labels.array, 4, axis=0), 4, axis=1)
    big = np.asfortranarray(np.concatenate([big] * 10, axis=2))
    affine = labels.affine.copy()
    affine[:3, :2] /= 4
    affine[:3, 2] /= 10
    times = []
    for _ in range(3):
        start = time.perf_counter()
        sizes = object_sizes(big, affine)
        times.append(time.perf_counter() - start)
    slices = sum(s.slices[1] - s.slices[0] + 1 for s in sizes)
    print(
        f"{len(sizes)} objects on {slices} object-slices of a {big.shape[0]} x {big.shape[1]} x "
        f"{big.shape[2]} {big.dtype} volume: sizes in {np.median(times):.2f} s (median of 3)"
    )
    moved = np.zeros_like(big)  # the same labels one voxel on along the first axis
    moved[1:] = big[:-1]
    start = time.perf_counter()
    agreements(big, moved, affine)
    seconds = time.perf_counter() - start
    print(f"compare of the same {len(sizes)} objects moved one voxel: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
