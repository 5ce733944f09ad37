"""CUDA check: the same models on GPU and CPU agree, and how fast the GPU encodes.

    PYTHONPATH=core python benchmarks/gpu_check.py [LITEMEDSAM_WEIGHTS]

Builds full-size SAM-Med2D (random weights) and, when a LiteMedSAM weights file is given
or installed, LiteMedSAM; compares embeddings, logits and masks between cuda and cpu;
runs propagation on the phantom on the GPU and prints its Dice; times the encoders.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from sammed2d import Predictor, build_model, load_model
from sammed2d.evaluation import dice, protocol_objects
from sammed2d.memory import reuse_freed_memory
from sammed2d.phantom import ct_phantom
from sammed2d.propagate import propagate


def timed(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    ct, truth, affine, names = ct_phantom()
    image = ct[:, :, 12]
    rows, cols = np.nonzero(truth[:, :, 12] == 1)
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    torch.manual_seed(0)
    models = {"sam-med2d": build_model("sam-med2d")}
    path = sys.argv[1] if len(sys.argv) > 1 else "litemedsam"
    try:
        models["litemedsam"] = load_model(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - report and go on with what we have
        print(f"litemedsam not loaded: {exc}")
    for name, cpu_model in models.items():
        state = {k: v.clone() for k, v in cpu_model.state_dict().items()}
        gpu_model = (
            build_model(cpu_model.spec) if name == "sam-med2d" else load_model(path, device="cuda")
        )
        if name == "sam-med2d":
            gpu_model.load_state_dict(state)
            gpu_model = gpu_model.to("cuda")
        results = {}
        for label, model in (("cpu", cpu_model), ("cuda", gpu_model)):
            predictor = Predictor(model)
            predictor.set_image(image, preset="abdomen")
            masks, scores, low = predictor.predict(box=box)
            results[label] = (predictor.get_image_embedding(), masks, scores, low)
        emb = (results["cpu"][0] - results["cuda"][0]).abs().max().item()
        logit = np.abs(results["cpu"][3] - results["cuda"][3]).max()
        differ = int((results["cpu"][1] != results["cuda"][1]).sum())
        print(
            f"{name}: cpu vs cuda embedding max diff {emb:.2e}, low-res logits {logit:.2e}, "
            f"mask pixels differing {differ} of {results['cpu'][1].size}"
        )
        x = torch.randn(8, 3, cpu_model.spec.input_size, cpu_model.spec.input_size, device="cuda")
        with torch.inference_mode():
            t1 = timed(lambda m=gpu_model, x=x: m.image_encoder(x[:1]))
            t8 = timed(lambda m=gpu_model, x=x: m.image_encoder(x)) / 8
        print(
            f"{name}: cuda fp32 encoder {t1 * 1000:.1f} ms/slice at batch 1, "
            f"{t8 * 1000:.1f} ms/slice at batch 8"
        )
        if name == "litemedsam":
            start = time.perf_counter()
            objects = protocol_objects(truth, axis=2, protocol="B", names=names)
            run = propagate(ct, objects, gpu_model, axis=2, affine=affine, preset="abdomen")
            scores = {names[o]: round(dice(run.labels == o, truth == o), 3) for o in names}
            print(
                f"litemedsam on cuda, phantom protocol B: {scores}, "
                f"{time.perf_counter() - start:.1f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
