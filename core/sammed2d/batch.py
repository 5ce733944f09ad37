"""Dataset scale: many cases on dask.distributed, and measuring a model on labelled data.

A manifest is a CSV with the header `image,prompts,labels` and optional `case`, `seeds` and
`channel` columns (relative paths are relative to the manifest; `seeds`, labels drawn on
some slices, stands in for a case's prompts, as `sammed2d propagate --seeds` does;
`channel`, which volume of a 4D image, as `--channel`). Each case is one
task; a failing case is reported and the others go on; outputs are written atomically, so a
rerun skips what is finished (resume). A case's outputs are named from its `case` value, or
else from the image's path relative to the manifest (`s0001/ct.nii.gz` ->
`s0001/ct_labels.nii.gz`), so two images of the same file name never share an output;
clashes are refused up front.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import SamMed2DError
from .io import ITK_SUFFIXES, NIFTI_SUFFIXES, suffix_of
from .orientation import slice_of

PROMPT_KINDS = ("box", "point1", "point3", "point5", "box3d", "box3d-free", "box3d-multi")
_PROTOCOL = {"box3d": "A", "box3d-free": "B", "box3d-multi": "C"}
_MODELS: dict = {}  # one loaded model per worker process


@dataclass
class Case:
    image: Path
    prompts: Path | None
    labels: Path | None
    name: str  # unique within the manifest: the `case` column or the image's relative path
    row: int  # line in the manifest, for messages
    seeds: Path | None = None  # labels drawn on some slices, instead of prompts
    channel: int | None = None  # which volume of a 4D image


@dataclass
class CaseResult:
    case: str
    objects: int = 0
    slices: int = 0
    seconds: float = 0.0
    status: str = "done"
    mean_dice: float | None = None


def read_manifest(path: str | os.PathLike) -> list[Case]:
    path = Path(path)
    if not path.is_file():
        raise SamMed2DError(f"manifest {path}: file not found")
    # UTF-8, with or without the byte-order mark spreadsheets write, whatever the locale.
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise SamMed2DError(
                    f"manifest {path}: expected a CSV header image,prompts,labels (and optional "
                    "case, seeds, channel)"
                )
            rows = [(n, r) for n, r in enumerate(reader, start=2) if (r.get("image") or "").strip()]
    except UnicodeDecodeError as exc:
        raise SamMed2DError(
            f"manifest {path}: not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"
        ) from None

    def resolve(value):
        value = (value or "").strip()
        return None if not value else (path.parent / value).resolve()

    cases = []
    for line, r in rows:
        image = resolve(r["image"])
        name = (r.get("case") or "").strip()
        if not name:
            try:
                name = image.relative_to(path.parent.resolve()).as_posix()
            except ValueError:  # outside the manifest's folder: its name, clashes checked below
                name = image.name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SamMed2DError(
                f"manifest {path}: row {line}: case {name!r} must be a relative name inside the "
                "output folder"
            )
        prompts, seeds = resolve(r.get("prompts")), resolve(r.get("seeds"))
        channel = (r.get("channel") or "").strip()
        if channel and not channel.isdigit():
            raise SamMed2DError(
                f"manifest {path}: row {line}: channel {channel!r} is not a whole number from 0"
            )
        channel = int(channel) if channel else None
        cases.append(Case(image, prompts, resolve(r.get("labels")), name, line, seeds, channel))
    _refuse_clashes(path, cases)
    return cases


def _refuse_clashes(manifest: Path, cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        key = output_path(case, Path("."), "").as_posix().lower()
        if key in seen:
            raise SamMed2DError(
                f"manifest {manifest}: rows {seen[key].row} and {case.row} would write the same "
                f"output ({case.name}); give them distinct `case` values"
            )
        seen[key] = case


# Label formats `batch --format` writes: the DICOM ones need each case's image to be a
# DICOM series (a SEG also takes a multi-frame file).
OUT_FORMATS = (".nii.gz", ".nrrd", ".mha", ".seg.nrrd", ".dcm", ".rtstruct.dcm")


def output_path(case: Case, out_dir: Path, suffix: str = "_labels", ext: str | None = None) -> Path:
    """Where a case's output goes: its name (folders kept) plus `suffix`, with extension
    `ext`, or else the input's format where that is a single file, else NIfTI."""
    name_ext = suffix_of(case.name)
    volume_exts = NIFTI_SUFFIXES + ITK_SUFFIXES
    stem = case.name[: -len(name_ext)] if name_ext in volume_exts else case.name
    if ext is None:
        ext = suffix_of(case.image)
        ext = ext if ext in volume_exts and ext not in (".nhdr", ".mhd") else ".nii.gz"
    return out_dir / f"{stem}{suffix}{ext}"


def _model(name: str, device: str, preprocessing: str | None = None, precision: str = "fp32"):
    from .memory import reuse_freed_memory
    from .models import load_model

    reuse_freed_memory()  # a batch worker owns its process
    key = (name, device, preprocessing, precision)
    if key not in _MODELS:
        _MODELS[key] = load_model(
            name, device=device, preprocessing=preprocessing, precision=precision
        )
    return _MODELS[key]


def _cache(cache_dir):
    from .cache import EmbeddingCache

    # Small in memory: a worker holds one case at a time; the disk keeps the rest.
    return EmbeddingCache(max_bytes=256 << 20, folder=cache_dir)


def _run_case(case: Case, out: Path, work) -> CaseResult:
    """Skip a finished case, time the work, and turn any failure into a status."""
    result = CaseResult(case.name)
    if out.exists():
        result.status = "done earlier"
        return result
    start = time.perf_counter()
    try:
        work(result)
    except SamMed2DError as exc:
        result.status = f"failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
        result.status = f"failed: {type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def propagate_case(
    case: Case,
    out_dir: str,
    model: str = "litemedsam",
    device: str = "cpu",
    cache_dir: str | None = None,
    preprocessing: str | None = None,
    precision: str = "fp32",
    server: str | None = None,
    api_key: str | None = None,
    out_format: str | None = None,
) -> CaseResult:
    """Propagate one case's prompts, here or on a `sammed2d serve` at `server`; never raises
    (a failure becomes the result's status). `out_format` (an extension of `OUT_FORMATS`)
    names the labels' format; None: the image's own where that is one file, else NIfTI.
    Each object's size (`sammed2d measure`) goes beside, to NAME_sizes.csv."""
    from .io import dicom_source
    from .labelfiles import (
        check_output,
        names_of,
        object_segments,
        propagation_input,
        write_labels,
    )  # fmt: skip
    from .measure import object_sizes, write_sizes_csv

    out = output_path(case, Path(out_dir), ext=out_format)
    sizes = output_path(case, Path(out_dir), "_sizes", ".csv")
    source = dicom_source(case.image)

    def work(result: CaseResult) -> None:
        check_output(out, source)  # a DICOM output needs a DICOM case: before its model runs
        if (case.prompts is None) == (case.seeds is None):
            raise SamMed2DError(
                "no prompts or seeds file for this case"
                if case.prompts is None
                else "both a prompts and a seeds file: give one"
            )
        volume, record = propagation_input(case.image, case.prompts, case.seeds, case.channel)
        objects = record.objects
        options = dict(
            axis=record.axis,
            affine=volume.affine,
            preset=record.window or "auto",
            settings=record.settings,
        )
        if server:
            from .remote import Client

            run = Client(server, api_key).propagate(volume.array, objects, **options)
        else:
            from .propagate import propagate

            net = _model(model, device, preprocessing, precision)
            run = propagate(volume.array, objects, net, cache=_cache(cache_dir), **options)
        segments = object_segments(objects)
        # the sizes first: a case counts as done once its labels exist
        write_sizes_csv(sizes, object_sizes(run.labels, volume.affine), names_of(segments))
        write_labels(out, run.labels, volume, segments, source_series=source)
        result.objects = len(objects)
        result.slices = sum(hi - lo + 1 for r in run.reached.values() if r for lo, hi in [r])

    return _run_case(case, out, work)


def evaluate_volume(
    image,
    labels,
    prompt: str = "box3d",
    classes=None,
    model="litemedsam",
    device="cpu",
    cache=None,
    seed: int = 0,
    axis: int = 2,
    window: str = "auto",
    settings=None,
) -> dict[int, float]:
    """Dice per class of the model on a labelled volume, with prompts simulated from the
    labels: SAM-Med2D's 2D protocols (box, 1/3/5 points per slice, fixed seed) or the 3D
    propagation protocols (box3d: middle-slice box and range; box3d-free: no range;
    box3d-multi: boxes on three slices). `settings`: PropagationSettings for a local model."""
    from .evaluation import dice, protocol_objects, simulated_prompt_2d
    from .io import read_volume
    from .objects import SlicePrompt

    if prompt not in PROMPT_KINDS:
        raise SamMed2DError(f"prompt {prompt!r}: expected one of {', '.join(PROMPT_KINDS)}")
    volume = read_volume(image) if not hasattr(image, "array") else image
    truth = np.asarray(read_volume(labels).array if not hasattr(labels, "array") else labels.array)
    if truth.shape != volume.array.shape:
        raise SamMed2DError(
            f"labels of shape {truth.shape} do not match the volume's {volume.array.shape}"
        )
    ids = [int(i) for i in np.unique(truth) if i != 0]
    if classes:
        ids = [i for i in ids if i in set(classes)]
    if hasattr(model, "propagate"):  # a remote.Client: the server's model
        propagate = model.propagate
        segment_slice = model.segment_slice
        engine = {}
    else:
        from .propagate import propagate, segment_slice

        net = _model(model, device) if isinstance(model, str) else model
        engine = {"model": net, "cache": cache if cache is not None else _cache(None)}
        if settings is not None:
            engine["settings"] = settings
    scores = {}
    if prompt in _PROTOCOL:
        objects = [o for o in protocol_objects(truth, axis, _PROTOCOL[prompt]) if o.id in ids]
        run = propagate(
            volume.array, objects, axis=axis, affine=volume.affine, preset=window, **engine
        )
        return {oid: dice(run.labels == oid, truth == oid) for oid in ids}
    rng = np.random.default_rng(seed)
    for oid in ids:
        found = np.zeros(truth.shape, bool)
        for index in np.flatnonzero(
            np.any(truth == oid, axis=tuple(a for a in range(3) if a != axis))
        ):
            gt = slice_of(truth, index, axis) == oid
            p = simulated_prompt_2d(gt, prompt, rng)
            sp = SlicePrompt(
                box=p.get("box"), points=p.get("point_coords"), labels=p.get("point_labels")
            )
            mask, _ = segment_slice(
                volume.array,
                int(index),
                sp,
                axis=axis,
                affine=volume.affine,
                preset=window,
                **engine,
            )
            sl = [slice(None)] * 3
            sl[axis] = int(index)
            found[tuple(sl)] = mask
        scores[oid] = dice(found, truth == oid)
    return scores


def evaluate_case(
    case: Case,
    out_dir: str,
    prompt: str,
    model: str = "litemedsam",
    device: str = "cpu",
    cache_dir: str | None = None,
    preprocessing: str | None = None,
    precision: str = "fp32",
    server: str | None = None,
    api_key: str | None = None,
) -> CaseResult:
    """Dice of one labelled case, written to DIR/<name>_dice.csv; never raises."""
    out = output_path(case, Path(out_dir), "_dice", ".csv")

    def work(result: CaseResult) -> None:
        if case.labels is None:
            raise SamMed2DError("no labels for this case")
        if server:
            from .remote import Client

            net = Client(server, api_key)
        else:
            net = _model(model, device, preprocessing, precision)
        from .io import read_volume

        image = read_volume(case.image, case.channel)
        scores = evaluate_volume(image, case.labels, prompt, model=net, cache=_cache(cache_dir))
        write_dice_csv(out, scores)
        result.objects = len(scores)
        result.mean_dice = round(float(np.mean(list(scores.values()))), 4) if scores else None

    return _run_case(case, out, work)


def write_dice_csv(path: Path, scores: dict[int, float], names: dict[int, str] | None = None):
    from .io import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["class", "name", "dice"])
            for oid, score in scores.items():
                w.writerow([oid, (names or {}).get(oid, ""), f"{score:.4f}"])
            if scores:
                w.writerow(["mean", "", f"{np.mean(list(scores.values())):.4f}"])

    return atomic_write(Path(path), write)


def run_batch(
    manifest,
    out_dir,
    scheduler: str | None = None,
    workers: int = 2,
    model: str = "litemedsam",
    device: str = "cpu",
    cache_dir: str | None = None,
    evaluate: str | None = None,
    preprocessing: str | None = None,
    progress=None,
    precision: str = "fp32",
    server: str | None = None,
    api_key: str | None = None,
    out_format: str | None = None,
) -> list[CaseResult]:
    """Every case of the manifest as one dask task; returns results in manifest order.
    With `server`, the workers are clients of that `sammed2d serve` and load no model."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SamMed2DError(
            "batch needs dask.distributed, which is an extra: pip install 'sammed2d[distributed]'"
        ) from None

    cases = read_manifest(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        # One thread per worker process: torch already uses the cores inside each task.
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        task = propagate_case if evaluate is None else evaluate_case
        extra = {"out_format": out_format} if evaluate is None else {"prompt": evaluate}
        futures = {
            client.submit(
                task,
                case,
                str(out_dir),
                model=model,
                device=device,
                cache_dir=cache_dir,
                preprocessing=preprocessing,
                precision=precision,
                server=server,
                api_key=api_key,
                pure=False,
                **extra,
            ): i
            for i, case in enumerate(cases)
        }
        results: list[CaseResult | None] = [None] * len(cases)
        done = 0
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker died on this case
                results[i] = CaseResult(cases[i].name, status=f"failed: {exc}")
            done += 1
            if progress is not None:
                progress(done, len(cases))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    write_summary(out_dir / "summary.csv", results)
    return results


def write_summary(path: Path, results: list[CaseResult]) -> None:
    from .io import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(results[0]))) if results else None
            if w:
                w.writeheader()
                for r in results:
                    w.writerow(asdict(r))

    atomic_write(path, write)


def format_table(results: list[CaseResult]) -> str:
    rows = [("case", "objects", "slices", "seconds", "status", "mean Dice")]
    for r in results:
        rows.append(
            (
                r.case,
                str(r.objects),
                str(r.slices),
                f"{r.seconds:.1f}",
                r.status,
                "" if r.mean_dice is None else f"{r.mean_dice:.3f}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
