"""The `sammed2d` command line.

Every error a user can cause ends in one line on stderr and exit code 2, with no partial
output file (outputs are written to a temporary file and renamed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import __version__
from .batch import OUT_FORMATS, PROMPT_KINDS
from .choices import PIPELINES, PRECISIONS
from .errors import SamMed2DError, SourceWarning
from .intensity import PRESETS
from .progress import progress_reporter

EXIT_USAGE = 2


def _model(args):
    from .memory import reuse_freed_memory
    from .models import load_model

    reuse_freed_memory()  # the command line owns its process

    return load_model(
        args.model,
        device=args.device,
        preprocessing=args.preprocessing,
        precision=args.precision,
    )


def _remote(args):
    from .remote import Client

    return Client(args.server, args.api_key)


def cmd_serve(args) -> int:
    import os

    from .server import ServerConfig, check_exposure, serve

    key = args.api_key or os.environ.get("SAMMED2D_API_KEY") or None
    check_exposure(args.host, key)  # before loading a model for nothing
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise SamMed2DError(
            "serve needs FastAPI and uvicorn, an extra: pip install 'sammed2d[serve]'"
        ) from None
    config = ServerConfig(
        model=args.model,
        device=args.device,
        precision=args.precision,
        preprocessing=args.preprocessing,
        api_key=key,
        max_sessions=args.max_sessions,
        max_memory=int(args.max_memory * 2**30),
        max_upload=int(args.max_upload * 2**30),
        session_ttl=args.session_ttl,
        cache_dir=str(args.cache) if args.cache else None,
    )
    serve(config, args.host, args.port)
    return 0


def _cache(args):
    from .cache import EmbeddingCache

    return EmbeddingCache(folder=args.cache) if getattr(args, "cache", None) else None


def cmd_segment(args) -> int:
    from .io import (
        IMAGE_SUFFIXES,
        ITK_SUFFIXES,
        MASK_SUFFIXES,
        NIFTI_SUFFIXES,
        one_slice,
        read_image,
        read_volume,
        suffix_of,
        write_mask,
        write_volume,
    )
    from .objects import SlicePrompt

    if args.box is None and not args.point:
        raise SamMed2DError("segment: give --box X0 Y0 X1 Y1 or at least one --point X Y")
    # Checked before the model loads and runs, which on a large image takes a while.
    writable = MASK_SUFFIXES
    if args.slice is not None:
        writable += ITK_SUFFIXES
    if suffix_of(args.out) not in writable:
        raise SamMed2DError(
            f"output {args.out}: unsupported mask format {suffix_of(args.out) or '(none)'}; "
            f"expected {', '.join(writable)}"
        )
    points = [*args.point, *args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    coords = np.array(points, np.float64) if points else None
    point_labels = np.array(labels) if points else None
    engine = _remote(args) if args.server else None
    model = None if engine else _model(args)
    if args.channel is not None and args.slice is None:
        raise SamMed2DError("segment: --channel picks a volume of a 4D file: give --slice N too")
    if args.slice is not None:
        if suffix_of(args.image) in IMAGE_SUFFIXES:
            raise SamMed2DError(
                f"{args.image}: --slice needs a volume (NIfTI, NRRD, MHA or a DICOM series); "
                "leave it out to segment a 2D image"
            )
        volume = read_volume(args.image, args.channel)
        if volume.array.ndim != 3:
            raise SamMed2DError(
                f"{args.image}: --slice needs a 3D volume, got {volume.array.ndim}D"
            )
        prompt = SlicePrompt(box=args.box, points=coords, labels=point_labels)
        where = dict(axis=args.axis, affine=volume.affine, preset=args.window)
        if engine:
            mask, score = engine.segment_slice(volume.array, args.slice, prompt, **where)
        else:
            from .propagate import segment_slice

            mask, score = segment_slice(volume.array, args.slice, prompt, model, **where)
    else:
        image = read_image(args.image)
        if engine:
            masks, scores, _ = engine.predict(
                image, coords, point_labels, args.box, preset=args.window
            )
        else:
            from .predictor import Predictor

            predictor = Predictor(model)
            predictor.set_image(image, preset=args.window)
            masks, scores, _ = predictor.predict(coords, point_labels, args.box)
        mask, score = masks[0], float(scores[0])
    if args.slice is not None and suffix_of(args.out) in NIFTI_SUFFIXES + ITK_SUFFIXES:
        # A one-slice volume on the volume's own grid, so it overlays the source.
        grid = one_slice(volume, args.slice, args.axis % 3)
        write_volume(args.out, np.expand_dims(mask.astype(np.uint8), args.axis % 3), grid)
    else:
        write_mask(args.out, mask)
    print(f"{args.out}: {int(mask.sum())} pixels, predicted IoU {score:.3f}")
    return 0


def cmd_propagate(args) -> int:
    from .io import dicom_source
    from .labelfiles import check_output, object_segments, propagation_input, write_labels
    from .measure import voxel_ml
    from .review import slices_to_check

    if (args.prompts is None) == (args.seeds is None):
        raise SamMed2DError("propagate: give --prompts PROMPTS.json or --seeds LABELS, one of them")
    if args.prompts is not None and (args.axis is not None or args.between):
        raise SamMed2DError(
            "propagate: --axis and --between go with --seeds (a prompts file names its axis "
            "and ranges)"
        )
    check_output(args.out, dicom_source(args.volume))  # before the model runs, not after
    axis = 2 if args.axis is None else args.axis
    volume, record = propagation_input(
        args.volume, args.prompts, args.seeds, args.channel, axis, args.between
    )
    settings = record.settings
    if args.slice_step is not None:
        settings = replace(settings, slice_step=args.slice_step)
    options = dict(
        axis=record.axis,
        affine=volume.affine,
        preset=args.window or record.window or "auto",
        settings=settings,
    )
    if args.server:
        engine = _remote(args)
        served = engine.info()["model"]
        family, weights = served["family"], served.get("sha256")
        run = engine.propagate
    else:
        from .propagate import propagate

        args.model = args.model or record.model or "litemedsam"
        model = _model(args)
        family, weights = model.spec.name, model.weights_id
        options.update(model=model, cache=_cache(args))
        run = propagate
    if record.sha256 and weights != record.sha256:
        _warn(
            f"{args.prompts} was made with weights {record.sha256[:12]}…, this run uses "
            f"{(weights or 'random')[:12]}…: labels may differ"
        )
    spacing = volume.spacing[record.axis] if volume.array.ndim == 3 else None
    if settings.slice_step is None and spacing is not None and spacing < THIN_SLICES_MM:
        from .orientation import MAX_REACH

        _warn(
            f"{args.volume}: slices {spacing:.3g} mm apart, thinner than any clinical scan "
            f"(are the file's units mm?); walks step at most {MAX_REACH} slices: give "
            "--slice-step 1 to visit every slice"
        )
    objects = record.objects
    with progress_reporter("propagating") as update:
        result = run(volume.array, objects, progress=update, **options)
    write_labels(
        args.out,
        result.labels,
        volume,
        object_segments(objects),
        source_series=dicom_source(args.volume),
        algorithm=f"SAM-Med2D suite ({family})",
    )
    per_voxel = voxel_ml(volume.affine)
    for obj in objects:
        reached = result.reached[obj.id]
        span = (
            "no slices"
            if reached is None
            else (f"slices {reached[0]}-{reached[1]} ({reached[1] - reached[0] + 1} slices)")
        )
        if reached is not None:
            span += f", {np.count_nonzero(result.labels == obj.id) * per_voxel:.1f} mL"
        name = f" {obj.name}" if obj.name else ""
        window = result.windows.get(obj.id)
        shown = f", {window} window" if window else ""
        print(f"object {obj.id}{name}: {span}{shown}, {result.seconds.get(obj.id, 0.0):.1f} s")
        checks = slices_to_check(
            result.labels, obj.id, record.axis, result.scores.get(obj.id), obj.slices
        )
        if checks:
            listed = "; ".join(f"slice {c.index} ({c.reason()})" for c in checks)
            print(f"  check first: {listed}")
    if result.slice_step > 1:
        print(
            f"walked every {result.slice_step} slices (--slice-step), the slices between "
            "interpolated"
        )
    print(f"labels written to {args.out}")
    return 0


def _named_labels(path, reference, names):
    """A label file read onto `reference`'s grid (if given), its segments renamed by the
    JSON file `names` (if given)."""
    from .labelfiles import read_labels
    from .segments import segments_from_json

    labels, segments = read_labels(path, reference=reference)
    if names:
        try:
            given = segments_from_json(json.loads(names.read_text(encoding="utf-8")), str(names))
        except FileNotFoundError:
            raise SamMed2DError(f"names {names}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SamMed2DError(f"names {names}: malformed JSON ({exc})") from None
        if not given:
            raise SamMed2DError(f"{names}: no segment names found")
        segments = [given.get(s.id, s) for s in segments] + [
            s for i, s in given.items() if i not in {t.id for t in segments}
        ]
    return labels, segments


def label_file_options(p, reference_help: str) -> None:
    """--reference and --names, for the commands that read a label file."""
    p.add_argument("--reference", type=Path, help=reference_help)
    p.add_argument("--names", type=Path, help='JSON {"1": "liver"} or {"1": {name, color}}')


def _labels_3d(path, reference_path, names):
    """(labels, segments, reference) for `measure` and `compare`: a 3D label file, on the
    grid of the image at `reference_path` where one is given."""
    from .io import read_volume

    reference = read_volume(reference_path) if reference_path else None
    labels, segments = _named_labels(path, reference, names)
    if labels.array.ndim != 3:
        raise SamMed2DError(f"{path}: expected a 3D label volume, got {labels.array.ndim}D")
    return labels, segments, reference


def _print_per_object(items, line, names, csv_path, write_csv, empty: str, what: str) -> None:
    """One line per object (`line(item, "3 liver")`), the CSV first where asked."""
    if csv_path:
        write_csv(csv_path, items, names)
    for item in items:
        print(line(item, f"{item.id} {names.get(item.id, '')}".strip()))
    if not items:
        print(empty)
    if csv_path:
        print(f"{what} written to {csv_path}")


def cmd_measure(args) -> int:
    from .dicom_seg import dicom_modality
    from .io import is_dicom_file
    from .labelfiles import is_seg_nrrd, names_of
    from .measure import object_sizes, size_text, write_sizes_csv

    labels, segments, reference = _labels_3d(args.labels, args.reference, args.names)
    sizes = object_sizes(labels.array, labels.affine, args.axis)
    if reference is None and (
        is_seg_nrrd(args.labels)
        or (is_dicom_file(args.labels) and dicom_modality(args.labels) == "SEG")
    ):
        _warn(
            f"slices are numbered on {args.labels.name}'s own grid, which may hold only the "
            "labelled slices, at the spacing it records: give --reference IMAGE to number "
            "them as the image's and measure at its spacing"
        )
    _print_per_object(
        sizes, size_text, names_of(segments), args.csv, write_sizes_csv,
        f"{args.labels}: no labelled voxels", "sizes",
    )  # fmt: skip
    return 0


def cmd_compare(args) -> int:
    from .io import Volume
    from .labelfiles import names_of
    from .measure import agreement_text, agreements, write_agreements_csv

    first, segments, _ = _labels_3d(args.first, args.reference, args.names)
    # the second onto the first's grid: a SEG or cropped .seg.nrrd of the same image fits
    second, more = _named_labels(args.second, Volume(first.array, first.affine), None)
    items = agreements(first.array, second.array, first.affine)
    _print_per_object(
        items, agreement_text, {**names_of(more), **names_of(segments)}, args.csv,
        write_agreements_csv, "no labelled voxels in either", "agreement",
    )  # fmt: skip
    return 0


def cmd_export(args) -> int:
    from .io import dicom_source, read_volume
    from .labelfiles import write_labels

    reference = read_volume(args.reference) if args.reference else None
    labels, segments = _named_labels(args.labels, reference, args.names)
    like = reference if reference is not None else labels
    write_labels(
        args.out,
        labels.array,
        like,
        segments,
        source_series=dicom_source(args.reference),
    )
    present = {int(i) for i in np.unique(labels.array) if i > 0}
    kept = [s for s in segments if s.id in present]
    print(f"{args.out}: {len(kept)} segment(s) " + ", ".join(f"{s.id} {s.name}" for s in kept))
    return 0


def cmd_embed(args) -> int:
    from .cache import EmbeddingCache
    from .intensity import intensity_range
    from .io import read_volume
    from .orientation import slice_view
    from .predictor import embed_slices
    from .propagate import VolumeSlices

    volume = read_volume(args.volume, args.channel)
    if volume.array.ndim != 3:
        raise SamMed2DError(f"{args.volume}: expected a 3D volume, got {volume.array.ndim}D")
    model = _model(args)
    cache = EmbeddingCache(max_bytes=0, folder=args.cache)
    axis = args.axis % 3
    slices = VolumeSlices(
        model,
        volume.array,
        axis,
        slice_view(volume.affine, axis),
        intensity_range(volume.array, args.window),
        cache,
    )
    start = time.perf_counter()
    n = volume.array.shape[axis]
    with progress_reporter("embedding") as update:
        for first in range(0, n, args.batch_size):
            batch = range(first, min(n, first + args.batch_size))
            embed_slices(model, [slices.rgb(i) for i in batch], args.batch_size, cache)
            update(batch[-1] + 1, n)
    print(f"{n} slices embedded into {args.cache} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_info(args) -> int:
    import os

    import torch

    from .models import SPECS, weights_path
    from .models.registry import weight_folders

    print(f"sammed2d {__version__}, torch {torch.__version__}")
    env = "" if os.environ.get("SAMMED2D_WEIGHTS") else " ($SAMMED2D_WEIGHTS is unset)"
    folders = ", ".join(str(f) for f in weight_folders())
    print(f"weights are looked up in: {folders}{env}; or give a file's path to --model")
    print("models:")
    for name, spec in SPECS.items():
        path = weights_path(name)
        where = str(path) if path else f"not found (get {spec.filename} from {spec.url})"
        print(
            f"  {name:10s} {spec.input_size:5d} px  {spec.description}\n"
            f"             weights: {where}"
        )
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    print("devices: " + ", ".join(devices))
    return 0


def cmd_batch(args) -> int:
    from .batch import format_table, run_batch

    with progress_reporter("cases", "case") as update:
        results = run_batch(
            args.manifest,
            args.out,
            scheduler=args.scheduler,
            workers=args.workers,
            model=args.model,
            device=args.device,
            cache_dir=args.cache,
            evaluate=args.evaluate,
            preprocessing=args.preprocessing,
            precision=args.precision,
            progress=update,
            server=args.server,
            api_key=args.api_key,
            out_format=args.format,
        )
    print(format_table(results))
    failed = [r for r in results if r.status.startswith("failed")]
    print(
        f"{len(results) - len(failed)} of {len(results)} cases finished; "
        f"summary in {Path(args.out) / 'summary.csv'}"
    )
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from .batch import evaluate_volume, write_dice_csv
    from .cache import EmbeddingCache
    from .io import read_volume
    from .labelfiles import names_of, read_labels

    volume = read_volume(args.image, args.channel)
    truth, segments = read_labels(args.labels, reference=volume)
    names = names_of(segments)
    cache = EmbeddingCache(folder=args.cache) if args.cache else None
    start = time.perf_counter()
    scores = evaluate_volume(
        volume,
        truth,
        args.prompt,
        classes=args.classes,
        model=_model(args),  # with --preprocessing and --precision
        device=args.device,
        cache=cache,
        window=args.window,
    )
    if not scores:
        raise SamMed2DError(f"{args.labels}: no labelled classes to evaluate")
    print(f"prompt {args.prompt}, model {args.model}, precision {args.precision}")
    print(f"{'class':>5}  {'name':14s}  dice")
    for oid, score in scores.items():
        print(f"{oid:>5}  {names.get(oid, ''):14s}  {score:.3f}")
    print(
        f"{'mean':>5}  {'':14s}  {np.mean(list(scores.values())):.3f}  "
        f"({time.perf_counter() - start:.1f} s)"
    )
    if args.csv:
        write_dice_csv(args.csv, scores, names)
    return 0


def cmd_finetune(args) -> int:
    import contextlib

    from .cache import EmbeddingCache
    from .finetune import FinetuneSettings, finetune, finetune_record, save_finetuned
    from .io import read_volume, weights_output
    from .labelfiles import read_labels
    from .models import load_model

    if len(args.images) != len(args.labels):
        raise SamMed2DError(
            f"{len(args.images)} images and {len(args.labels)} label files: give one label "
            "file per image, in the same order"
        )
    if args.epochs < 1 or not args.lr > 0 or not 0 < args.val_fraction < 1:
        raise SamMed2DError("--epochs must be 1 or more, --lr above 0, --val-fraction in (0, 1)")
    weights_output(args.out, args.model)  # a wrong --out says so now, not after training
    cases = []
    for image, labels in zip(args.images, args.labels):
        volume = read_volume(image, args.channel)
        if volume.array.ndim != 3:
            raise SamMed2DError(f"{image}: expected a 3D volume, got {volume.array.ndim}D")
        truth, _ = read_labels(labels, reference=volume)
        cases.append((volume.array, volume.affine, truth.array))
    model = load_model(args.model, device=args.device, preprocessing=args.preprocessing)
    settings = FinetuneSettings(
        epochs=args.epochs, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed
    )
    # On disk only: fine-tuning holds each embedding in memory itself.
    cache = EmbeddingCache(max_bytes=0, folder=args.cache) if args.cache else None
    with contextlib.ExitStack() as stack:
        bars = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in bars:
                unit = "slice" if what == "embedding" else "step"
                bars[what] = stack.enter_context(progress_reporter(what, unit))
            bars[what](done, total)

        report = finetune(
            model, cases, args.axis % 3, args.window, settings, cache, progress=progress
        )
    print(
        f"{report.train_samples} slices to train on, {report.val_samples} held out "
        f"({'the last volumes' if len(cases) > 1 else 'the last slices'})"
    )
    print(f"validation Dice (each object's own box, 2D): before {report.before:.3f}")
    for n, (loss, dice) in enumerate(report.epochs, 1):
        print(f"epoch {n}: train loss {loss:.3f}, validation Dice {dice:.3f}")
    kept = f"epoch {report.best_epoch}" if report.best_epoch else "the weights given"
    print(f"kept {kept}: validation Dice {report.after:.3f} ({report.seconds:.0f} s)")
    record = finetune_record(model, args.model, args.window, args.axis % 3, len(cases), settings)
    out = save_finetuned(model, args.out, report, record)
    hint = (
        f" --preprocessing {model.spec.preprocessing}"
        if model.spec.name in ("sam-vit-b", "medsam")
        else ""
    )
    print(f"wrote {out} (and {out.name}.json); use it with --model {out}{hint}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(
        Path(args.out),
        model_name=args.model,
        device=args.device,
        preprocessing=args.preprocessing,
        precision=args.precision,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sammed2d",
        description="Promptable segmentation of medical images and volumes (SAM-Med2D family).",
    )
    parser.add_argument("--version", action="version", version=f"sammed2d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p, device="auto", model_default="litemedsam"):
        p.add_argument(
            "--model",
            default=model_default,
            help="registry name or checkpoint path"
            + (" (default: the prompts file's, else litemedsam)" if model_default is None else ""),
        )
        p.add_argument("--device", default=device, help="auto, cpu, cuda, cuda:N or mps")
        p.add_argument(
            "--preprocessing",
            choices=PIPELINES,
            help="input pipeline of a checkpoint that is not a known official file "
            "(default: recognised from its SHA-256 or its tensors)",
        )
        p.add_argument(
            "--precision",
            choices=PRECISIONS,
            default="fp32",
            help="image encoder precision: bf16 on CPUs with bf16 instructions and on CUDA "
            "(faster; embeddings differ slightly, see the README)",
        )

    def common(p, cache=False, window_default="auto"):
        model_options(p, model_default=None if window_default is None else "litemedsam")
        p.add_argument(
            "--window",
            default=window_default,
            choices=PRESETS,
            help="intensity preset"
            + (" (default: the prompts file's, else auto)" if window_default is None else ""),
        )
        if cache:
            p.add_argument("--cache", type=Path, help="folder for embeddings kept between runs")

    def channel_option(p, what="a 4D file (MR sequences, channels, time points)", default=""):
        p.add_argument(
            "--channel", type=int, metavar="N", help=f"which volume of {what}, from 0{default}"
        )

    def remote_options(p):
        p.add_argument(
            "--server",
            metavar="URL",
            help="run the model on a `sammed2d serve` at URL (then --model, --device and "
            "--precision are the server's)",
        )
        p.add_argument("--api-key", help="the server's key (default: $SAMMED2D_API_KEY)")

    p = sub.add_parser("segment", help="one 2D mask from a 2D image or one slice of a volume")
    remote_options(p)
    p.add_argument(
        "image",
        type=Path,
        help="2D image (PNG, JPEG, TIFF, one DICOM file), or with --slice a volume (NIfTI, "
        "NRRD, MHA or a DICOM series folder)",
    )
    p.add_argument(
        "--box",
        type=float,
        nargs=4,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box corners in pixels, x along columns and y along rows (for a volume's slice, "
        "x indexes its later remaining axis, as in the prompts file)",
    )
    p.add_argument(
        "--point",
        type=float,
        nargs=2,
        action="append",
        default=[],
        metavar=("X", "Y"),
        help="a point on the object (repeat for more)",
    )
    p.add_argument(
        "--negative",
        type=float,
        nargs=2,
        action="append",
        default=[],
        metavar=("X", "Y"),
        help="a point off the object (repeat for more)",
    )
    p.add_argument("--slice", type=int, help="slice index when IMAGE is a volume")
    p.add_argument("--axis", type=int, default=2, help="slice axis of the volume (default 2)")
    channel_option(p)
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="mask file: .png or .tif (the slice's array), or .nii.gz/.nrrd/.mha with --slice "
        "(a one-slice volume on the volume's grid)",
    )
    common(p)
    p.set_defaults(run=cmd_segment)

    p = sub.add_parser("propagate", help="segment objects through a volume from prompts")
    p.add_argument("volume", type=Path, help="NIfTI, NRRD, MHA or a DICOM series folder")
    channel_option(p, default="; default: the one the prompts file names, if any")
    p.add_argument("--prompts", type=Path, help="PROMPTS.json")
    p.add_argument(
        "--seeds",
        type=Path,
        metavar="LABELS",
        help="instead of prompts: labels drawn on some slices (a label volume, .seg.nrrd, "
        "DICOM SEG or RT Structure Set on VOLUME); each labelled slice is taken as given and "
        "every label is carried through the slices between and past them",
    )
    p.add_argument(
        "--axis", type=int, help="slice axis of --seeds (default 2; a prompts file names its own)"
    )
    p.add_argument(
        "--between",
        action="store_true",
        help="with --seeds: fill only between each label's first and last labelled slice "
        "(by default the walk also goes on past them until the structure ends)",
    )
    remote_options(p)
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="labels: .nii.gz/.nii/.nrrd/.mha (+ x.json with names and colours), .seg.nrrd "
        "(3D Slicer), .dcm (DICOM SEG) or .rtstruct.dcm (RT Structure Set, for planning "
        "systems); DICOM outputs need VOLUME to be a DICOM series folder",
    )
    p.add_argument(
        "--slice-step",
        type=int,
        metavar="N",
        help="walk every N-th slice and interpolate the slices between (N times fewer "
        "slices to embed; default: the prompts file's setting, else the slices within 3 mm, "
        "so every slice of a scan with slices 2 mm apart or more)",
    )
    common(p, cache=True, window_default=None)
    p.set_defaults(run=cmd_propagate)

    p = sub.add_parser(
        "export",
        help="convert labels to DICOM SEG, RT Structure Set, .seg.nrrd or NIfTI with names and "
        "colours",
    )
    p.add_argument("labels", type=Path, help="label volume, .seg.nrrd or DICOM SEG")
    label_file_options(
        p,
        "the image the labels were made on (for .dcm output: a DICOM series folder or "
        "multi-frame file; for .rtstruct.dcm: a series folder)",
    )
    p.add_argument(
        "-o", "--out", type=Path, required=True, help=".dcm, .rtstruct.dcm, .seg.nrrd, .nii.gz, ..."
    )
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "measure",
        help="each labelled object's volume (mL) and longest in-plane diameter (mm)",
    )
    p.add_argument(
        "labels", type=Path, help="label volume, .seg.nrrd, DICOM SEG or RT Structure Set"
    )
    label_file_options(p, "the image the labels were made on (needed for an RT Structure Set)")
    p.add_argument(
        "--axis",
        type=int,
        choices=[0, 1, 2],
        help="array axis of the slices the diameter is measured on (default: the axial "
        "slices, from the file's orientation)",
    )
    p.add_argument("--csv", type=Path, help="also write the sizes to this CSV file")
    p.set_defaults(run=cmd_measure)

    p = sub.add_parser(
        "compare",
        help="how two segmentations of one image agree, per object: Dice, volumes, HD95 and "
        "mean surface distance (mm)",
    )
    p.add_argument("first", type=Path, help="labels (e.g. the model's)")
    p.add_argument("second", type=Path, help="labels of the same image (e.g. a reader's)")
    label_file_options(
        p, "the image both were made on (needed for an RT Structure Set or a SEG first)"
    )
    p.add_argument("--csv", type=Path, help="also write the figures to this CSV file")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("embed", help="precompute a volume's embeddings into a cache folder")
    p.add_argument("volume", type=Path, help="NIfTI, NRRD, MHA or a DICOM series folder")
    channel_option(p)
    p.add_argument("--cache", type=Path, required=True, help="folder for the embeddings")
    p.add_argument("--axis", type=int, default=2, help="slice axis (default 2)")
    p.add_argument("--batch-size", type=int, default=1, help="slices per encoder call")
    model_options(p)
    p.add_argument(
        "--window",
        default="auto",
        choices=PRESETS,
        help="intensity preset; propagate reuses embeddings made in the window it uses",
    )
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("batch", help="run a manifest of cases on dask.distributed")
    p.add_argument(
        "manifest",
        type=Path,
        help="CSV with header image,prompts,labels (optional columns case, seeds)",
    )
    remote_options(p)
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--scheduler", help="tcp://host:port of a running dask scheduler")
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--evaluate", choices=PROMPT_KINDS, help="measure Dice against labels")
    p.add_argument(
        "--format",
        choices=OUT_FORMATS,
        help="the labels' format (default: the image's own where it is one file, else .nii.gz); "
        ".dcm (DICOM SEG) and .rtstruct.dcm (RT Structure Set) need DICOM series",
    )
    model_options(p, device="cpu")
    p.add_argument("--cache", help="shared on-disk embedding cache folder")
    p.set_defaults(run=cmd_batch)

    p = sub.add_parser("evaluate", help="Dice of the model on a labelled volume")
    p.add_argument("image", type=Path, help="NIfTI, NRRD, MHA or a DICOM series folder")
    p.add_argument(
        "labels", type=Path, help="its reference labels (.nii.gz, .seg.nrrd, DICOM SEG, ...)"
    )
    channel_option(p)
    p.add_argument(
        "--prompt",
        default="box3d",
        choices=PROMPT_KINDS,
        help="per slice: box, point1/3/5 (the label's own, as the SAM-Med2D paper); through "
        "the volume: box3d (middle slice's box and the range, the default), box3d-free (no "
        "range) or box3d-multi (boxes on three slices)",
    )
    p.add_argument("--classes", type=int, nargs="+", help="label values to score (default all)")
    p.add_argument("--csv", type=Path, help="also write the Dice table here")
    common(p, cache=True)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser(
        "finetune", help="train the mask decoder on your labelled volumes (encoder kept)"
    )
    p.add_argument("--images", type=Path, nargs="+", required=True, help="volumes")
    p.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        required=True,
        help="one label file per image, same order (.nii.gz, .seg.nrrd, DICOM SEG, ...)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="the fine-tuned checkpoint, .pth")
    channel_option(p, "4D images (MR sequences, channels)", ", the same for each")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="held out: that share of the volumes, or of one volume's last slices",
    )
    p.add_argument("--axis", type=int, default=2, help="slice axis (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="litemedsam", help="registry name or checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--preprocessing", choices=PIPELINES, help="as for the other commands")
    p.add_argument(
        "--window",
        default="auto",
        choices=PRESETS,
        help="intensity preset; auto: each object in the window propagation gives it",
    )
    p.add_argument("--cache", type=Path, help="folder for embeddings kept between runs")
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("serve", help="serve a model over HTTP to napari, Slicer and CLI clients")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--api-key",
        help="key clients must send; required off loopback (default: $SAMMED2D_API_KEY)",
    )
    p.add_argument("--max-sessions", type=int, default=32)
    p.add_argument(
        "--max-memory", type=float, default=8.0, help="GB for volumes and embeddings (default 8)"
    )
    p.add_argument("--max-upload", type=float, default=2.0, help="GB per volume (default 2)")
    p.add_argument(
        "--session-ttl", type=float, default=3600.0, help="seconds idle before a session goes"
    )
    p.add_argument("--cache", type=Path, help="folder for embeddings kept between runs")
    model_options(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("info", help="models, where their weights are, devices")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("demo", help="the main job on the embedded default model, no input needed")
    p.add_argument("-o", "--out", default="sammed2d-demo", help="output folder")
    model_options(p)
    p.set_defaults(run=cmd_demo)
    return parser


# Slices closer than this are not a clinical scan: micro-CT, microscopy, or units read
# wrongly; `propagate` says so, since its steps in mm then mean nothing anatomical.
THIN_SLICES_MM = 0.1


def _warn(text: str) -> None:
    print(f"sammed2d: warning: {text}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning

            def show(message, category, *rest):
                if issubclass(category, SourceWarning):
                    _warn(str(message))
                else:
                    shown(message, category, *rest)

            warnings.showwarning = show
            return args.run(args)
    except SamMed2DError as exc:
        print(f"sammed2d: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "torch":
            raise
        print(
            "sammed2d: error: running a model here needs PyTorch: pip install torch (the "
            "build for your machine, see the README), or use --server URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sammed2d: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went (`sammed2d info | head`): Python's own exit would flush into the
        # closed pipe again and print a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
