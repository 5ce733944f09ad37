"""Prompt -> full-size mask latency with the image embedding already computed.

A 512 x 512 CT-like slice; one box prompt; best of N runs after a warm-up. SAM-Med2D uses
random weights at full size (same cost as the real ones). Each model runs eagerly (the CLI)
and as traced graphs (napari, Slicer and the server: `sammed2d.graphs`). With --busy-thread
a Python thread spins beside the predictor the whole time, as a GUI thread between its events
can: eager operators each wait for Python's lock, graphs do not.

    python benchmarks/predictor.py [--repeats 30] [--busy-thread]
    python benchmarks/predictor.py --upscale-reorder | --four-boxes | --shared-tokens |
                                   --near-boxes [--rounds 8]

--upscale-reorder: LiteMedSAM decoder calls (fp32 and bf16) with the masks put in image order
by one 8-axis gather (the code before 2026-12-07, kept here as the reference) and by today's
two reorders, alternating; the logits must be identical. --four-boxes: four boxes on one
slice decoded in one call against four calls (what decoding the objects on a slice together
would save). --shared-tokens: four boxes in one call, starting from one copy of the image
tokens (today) against a copy per box (the code before 2026-12-07's last change); the logits
must be identical. --near-boxes: the same four boxes with the whole masks upscaled against
masks around the boxes only (propagation's steps); the masks must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch
from encoder import matmul_gflops

from sammed2d import Predictor, build_model, graphs, load_model
from sammed2d.memory import reuse_freed_memory
from sammed2d.phantom import ct_phantom

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--busy-thread", action="store_true", help="a spinning Python thread beside"
    )
    parser.add_argument("--upscale-reorder", action="store_true")
    parser.add_argument("--four-boxes", action="store_true")
    parser.add_argument("--shared-tokens", action="store_true")
    parser.add_argument("--near-boxes", action="store_true")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    chosen = {
        "reorder": args.upscale_reorder,
        "four": args.four_boxes,
        "shared": args.shared_tokens,
        "near": args.near_boxes,
    }
    if any(chosen.values()):
        return _decoder_comparison(next(k for k, on in chosen.items() if on), args.rounds)
    torch.manual_seed(0)
    ct, labels, _, _ = ct_phantom(shape=(512, 512, 3))
    image = ct[:, :, 1]
    rows, cols = np.nonzero(labels[:, :, 1] == 1)
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 512 x 512 slice; "
        f"fp32 matmul 4096x4096: {matmul_gflops(3):.1f} GFLOP/s (this CPU's clock drifts)"
    )
    for name, model in [
        ("sam-med2d", build_model("sam-med2d")),
        ("litemedsam", load_model("litemedsam", device="cpu")),
    ]:
        predictor = Predictor(model)
        predictor.set_image(image, preset="abdomen")
        for mode in ("eager", "graphs"):
            graphs.enable(model, mode == "graphs")
            for multimask in (False, True):
                predictor.predict(box=box, multimask_output=multimask)
                times = _timed(predictor, box, multimask, args.repeats, args.busy_thread)
                busy = ", busy thread" if args.busy_thread else ""
                print(
                    f"{name:11s} {mode:6s} multimask={multimask!s:5s}{busy}: best "
                    f"{min(times) * 1000:6.1f} ms, median {statistics.median(times) * 1000:6.1f} "
                    "ms per prompt -> 512x512 mask"
                )
    return 0


def _gathered_masks(decoder, src, hyper_in, h, w):
    """`MaskDecoder._masks_token_major` as it was before 2026-12-07: the same upscaling,
    then the (pixel, mask) logits put in image order by one 8-axis gather."""
    from sammed2d.models import mask_decoder as md

    up1, norm, act1, up2, _ = decoder.output_upscaling
    b = src.shape[0]
    x = md._subpixel(src.reshape(b * h * w, -1), up1).reshape(b * h * w * 4, -1)
    x = md._gelu_(md.F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps), act1)
    x = md._subpixel(x, up2, gelu=True).reshape(b, h * w * 16, -1)
    k = hyper_in.shape[1]
    masks = (x @ hyper_in.transpose(1, 2)).reshape(b, h, w, 2, 2, 2, 2, k)
    return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, k, 4 * h, 4 * w)


def _decoder_comparison(which: str, rounds: int) -> int:
    from sammed2d.models.mask_decoder import OUTSIDE, MaskDecoder
    from sammed2d.predictor import embed_slices

    ct, _, _, _ = ct_phantom(shape=(256, 256, 3))
    rgb = np.repeat(
        np.clip((ct[:, :, 1] + 160) / 400 * 255, 0, 255).astype(np.uint8)[..., None], 3, 2
    )
    boxes = np.array(
        [[60, 70, 140, 150], [20, 30, 80, 90], [150, 100, 220, 200], [100, 20, 160, 60]],
        np.float32,
    )
    today = MaskDecoder._masks_token_major
    variants = {
        "reorder": {"8-axis gather": "gather", "two reorders": "one"},
        "four": {"four calls": "separate", "one call of four": "one"},
        "shared": {"a copy of the image tokens per box": "copies", "one copy": "one"},
        "near": {"whole masks": "one", "masks around the boxes": "near"},
    }[which]
    for precision in ("fp32", "bf16"):
        model = load_model("litemedsam", device="cpu", precision=precision)
        emb = embed_slices(model, [rgb], 1, None)[0]
        prompts = boxes[:1] if which == "reorder" else boxes
        times = {name: [] for name in variants}
        logits = {}
        try:
            for _ in range(rounds):
                for name, how in variants.items():
                    gather = how == "gather"
                    MaskDecoder._masks_token_major = _gathered_masks if gather else today
                    for _ in range(3):
                        logits[name] = _logits(model, emb, prompts, how)
                    for _ in range(20):
                        start = time.perf_counter()
                        _logits(model, emb, prompts, how)
                        times[name].append(time.perf_counter() - start)
        finally:
            MaskDecoder._masks_token_major = today
        a, b = logits.values()
        line = ", ".join(
            f"{name} {statistics.median(t) * 1000:.2f} ms" for name, t in times.items()
        )
        what = "one box" if which == "reorder" else "four boxes"
        inside = b != OUTSIDE if which == "near" else torch.ones_like(b, dtype=torch.bool)
        where = " inside the regions" if which == "near" else ""
        print(
            f"litemedsam {precision}, {what}, median of {rounds} alternating rounds of 20: "
            f"{line}; logits{where} differ by at most {float((a - b)[inside].abs().max()):.1e}"
        )
        if which == "near":
            assert torch.equal(a > 0, b > 0), "masks around the boxes must be the whole masks"
        elif which != "four":
            assert torch.equal(a, b), "both forms must give the same logits"
    return 0


def _logits(model, emb, boxes, how: str) -> torch.Tensor:
    """Low-res logits of `boxes` from one decoder call, or one call each (`separate`), or
    one call whose image tokens are copied per box (`copies`)."""
    from sammed2d.predictor import decode

    if how == "separate":
        return torch.cat(
            [decode(model, emb, boxes=b[None], multimask_output=None)[0] for b in boxes]
        )
    if how == "copies":
        # A dense embedding per box, as mask prompts give, takes the decoder's per-box path.
        encode = model.prompt_encoder.forward
        model.prompt_encoder.forward = lambda *a: tuple(t.contiguous() for t in encode(*a))
        try:
            return decode(model, emb, boxes=boxes, multimask_output=None)[0]
        finally:
            del model.prompt_encoder.forward
    return decode(model, emb, boxes=boxes, multimask_output=None, near_boxes=how == "near")[0]


def _timed(predictor, box, multimask, repeats, busy) -> list[float]:
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
        repeats = min(repeats, 5)  # eager calls take seconds each beside the spinner
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            masks, _, _ = predictor.predict(box=box, multimask_output=multimask)
            times.append(time.perf_counter() - start)
    finally:
        stop.set()
    assert masks.shape[-2:] == (512, 512)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
