"""Fine-tuning the mask decoder, on a small real model and generated volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sammed2d import load_model
from sammed2d.cli import main
from sammed2d.errors import Cancelled, ImageError
from sammed2d.finetune import FinetuneSettings, finetune, save_finetuned
from sammed2d.io import Volume, write_volume


def blobs(seed: int = 0, depth: int = 10):
    """A CT-like volume (HU) with two objects whose size changes along the slices."""
    rng = np.random.default_rng(seed)
    ct = rng.normal(-60, 8, (64, 64, depth)).astype(np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    for k in range(depth):
        r = 6 + k % 4
        labels[20 - r : 20 + r, 24 - r : 24 + r, k] = 1
        labels[44 : 44 + r, 40 : 40 + r, k] = 2
    ct[labels == 1] += 140
    ct[labels == 2] += 60
    return ct, labels


def test_the_decoder_learns_and_only_the_decoder(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint, device="cpu")
    encoder = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    ct, labels = blobs()
    report = finetune(
        model, [(ct, np.eye(4), labels)], settings=FinetuneSettings(epochs=3, lr=1e-3)
    )
    assert report.train_samples == 8 and report.val_samples == 2  # the last two slices
    assert report.best_epoch >= 1 and report.after > report.before + 0.1
    assert len(report.epochs) == 3 and report.epochs[-1][0] < report.epochs[0][0]
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, encoder[k]), k
    # every part learns, the upscaling too, which inference runs through oneDNN's fused
    # calls (they have no gradients: training must take the plain path)
    changed = {
        k for k, v in model.mask_decoder.state_dict().items() if not torch.equal(v, decoder[k])
    }
    assert {"output_upscaling.0.weight", "output_upscaling.3.weight"} <= changed
    assert "transformer.layers.0.cross_attn_token_to_image.k_proj.weight" in changed
    assert "iou_prediction_head.layers.2.weight" in changed
    assert not any(p.requires_grad for p in model.parameters())

    out = save_finetuned(model, tmp_path / "tuned.pth", report, {"base_model": "tiny"})
    again = load_model(out, device="cpu")  # recognised by its tensors, as any checkpoint
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    info = json.loads((tmp_path / "tuned.pth.json").read_text())
    assert info["base_model"] == "tiny" and info["report"]["after"] == pytest.approx(report.after)


def test_a_cancelled_run_leaves_the_weights_given(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    ct, labels = blobs()
    steps = []

    def progress(what, done, total):
        steps.append(what)

    with pytest.raises(Cancelled):
        finetune(
            model,
            [(ct, np.eye(4), labels)],
            settings=FinetuneSettings(epochs=2, lr=1e-3),
            progress=progress,
            should_stop=lambda: steps.count("epoch 1/2") >= 3,
        )
    for k, v in model.mask_decoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_input_gets_one_line(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    ct, labels = blobs()
    with pytest.raises(ImageError, match="do not match"):
        finetune(model, [(ct, np.eye(4), labels[:, :, :5])])
    with pytest.raises(ImageError, match="no labelled object"):
        finetune(model, [(ct, np.eye(4), np.zeros_like(labels))])


def test_the_command_holds_out_whole_volumes_and_writes_a_loadable_file(
    tiny_checkpoint, tmp_path, capsys
):
    args = []
    for n in range(3):
        ct, labels = blobs(seed=n, depth=6)
        image = write_volume(tmp_path / f"ct{n}.nii.gz", ct, Volume(ct, np.eye(4)))
        label = write_volume(tmp_path / f"l{n}.nii.gz", labels, Volume(labels, np.eye(4)))
        args.append((image, label))
    out = tmp_path / "tuned.pth"
    common = ["--model", str(tiny_checkpoint), "--device", "cpu", "--out", str(out)]
    code = main(
        ["finetune", "--images", *[str(i) for i, _ in args], "--labels"]
        + [str(lab) for _, lab in args]
        + ["--epochs", "2", "--lr", "1e-3", "--val-fraction", "0.34", *common]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "12 slices to train on, 6 held out (the last volumes)" in printed
    assert "epoch 2: train loss" in printed and f"use it with --model {out}" in printed
    record = json.loads(out.with_name("tuned.pth.json").read_text())
    assert record["cases"] == 3 and record["pipeline"] == "sammed2d"
    load_model(out, device="cpu")

    code = main(["finetune", "--images", str(args[0][0]), "--labels", *map(str, args[1]), *common])
    assert code == 2
    assert "give one label file per image" in capsys.readouterr().err
    # a wrong --out is refused before any slice is embedded, not after training
    one = ["--images", str(args[0][0]), "--labels", str(args[0][1])]
    for bad, said in ((tmp_path / "tuned.nii.gz", "saved as .pth"),
                      (tiny_checkpoint, "holds the weights being fine-tuned")):  # fmt: skip
        code = main(["finetune", *one, "--model", str(tiny_checkpoint), "--out", str(bad)])
        assert code == 2 and said in capsys.readouterr().err


def test_the_fused_calls_stand_aside_where_weights_learn():
    """oneDNN's fused calls have no gradients: with autograd recording for a weight that
    learns, the plain path runs even when the input itself needs no gradient."""
    from sammed2d.models import fused

    weight = torch.randn(4, 3, requires_grad=True)
    out = fused.linear(torch.randn(5, 3), weight, None, gelu=True)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_a_fine_tuned_model_reuses_its_base_models_embeddings(tiny_checkpoint, tmp_path):
    """Embeddings are keyed on the image encoder alone: the tuned file hits the slices its
    base embedded (no slice embedded twice), and another encoder never does."""
    from sammed2d import EmbeddingCache
    from sammed2d.cache import embedding_key
    from sammed2d.predictor import embed_slices
    from sammed2d.preprocess import model_input

    base = load_model(tiny_checkpoint, device="cpu")
    ct, labels = blobs()
    cache = EmbeddingCache(max_bytes=1 << 30)
    report = finetune(base, [(ct, np.eye(4), labels)], settings=FinetuneSettings(epochs=1),
                      cache=cache)  # fmt: skip
    tuned = load_model(save_finetuned(base, tmp_path / "t.pth", report, {}), device="cpu")
    original = load_model(tiny_checkpoint, device="cpu")
    assert tuned.weights_id != original.weights_id
    assert tuned.encoder_id == original.encoder_id

    image = np.stack([np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)] * 3, -1)
    x, _ = model_input(image, tuned.spec.preprocessing, tuned.spec.input_size)
    assert embedding_key(x, tuned) == embedding_key(x, original)
    counts = []
    embed_slices(original, [image], cache=cache)
    embed_slices(tuned, [image], cache=cache, progress=lambda done, total: counts.append(done))
    assert counts[0] == 1  # found in the cache before any encoding

    other = load_model(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        other.image_encoder.patch_embed.proj.weight[0, 0, 0, 0] += 1e-3
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    assert load_model(path, device="cpu").encoder_id != original.encoder_id


def test_each_object_trains_in_the_window_propagation_gives_it(tiny_checkpoint):
    """Under `auto` an object is shown in the window its box asks for (a lung in the lung
    window, a vertebra in the bone window), as propagation will show it; a fixed preset
    shows every object in that one."""
    from sammed2d import EmbeddingCache
    from sammed2d.finetune import object_windows

    rng = np.random.default_rng(1)
    ct = rng.normal(40, 10, (64, 64, 6)).astype(np.float32)  # soft tissue, in HU
    labels = np.zeros(ct.shape, np.uint8)
    ct[4:30, 4:60] = rng.normal(-800, 40, (26, 56, 6))  # lung, around a small organ
    labels[6:28, 6:58] = 1
    ct[12:20, 20:40] = 50
    labels[12:20, 20:40] = 0
    ct[40:56, 20:36] = 700  # bone
    labels[40:56, 20:36] = 2
    ct[40:56, 40:56] += 20  # an organ
    labels[40:56, 40:56] = 3
    assert object_windows(ct, labels, 2, "auto") == {"lung": [1], "bone": [2], "abdomen": [3]}
    assert object_windows(ct, labels, 2, "abdomen") == {"abdomen": [1, 2, 3]}

    model = load_model(tiny_checkpoint, device="cpu")
    cache = EmbeddingCache(max_bytes=1 << 30)
    report = finetune(model, [(ct, np.eye(4), labels)], settings=FinetuneSettings(epochs=1),
                      cache=cache)  # fmt: skip
    assert (report.train_samples, report.val_samples) == (5, 1)  # slices, not samples
    assert len(cache) == 3 * 6  # every slice in each of the three windows
