"""The Predictor: end-to-end parity from raw images, prompt validation, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed2d import Predictor, load_model
from sammed2d.errors import PromptError
from sammed2d.preprocess import model_input

from ..conftest import SAMMED2D_MULTIMASK_CASES, assert_mask_matches, predict_fixture_case


def test_sammed2d_end_to_end_from_raw_image(fixtures_dir):
    cases = torch.load(fixtures_dir / "sammed2d_tiny_cases.pt", weights_only=True)
    image = cases["image"].numpy()
    x, _ = model_input(image, "sammed2d", 256)
    assert (x - cases["encoder_input"]).abs().max() < 1e-5
    predictor = Predictor(load_model(fixtures_dir / "sammed2d_tiny.pth", device="cpu"))
    predictor.set_image(image)
    for case in cases["cases"]:
        masks, _, _ = predict_fixture_case(predictor, case, SAMMED2D_MULTIMASK_CASES)
        assert_mask_matches(masks[0], case["mask"].numpy(), case["name"])


def test_litemedsam_end_to_end_from_raw_image(fixtures_dir, litemedsam):
    cases = torch.load(fixtures_dir / "litemedsam_cases.pt", weights_only=True)
    x, _ = model_input(cases["image"].numpy(), "litemedsam", 256)
    assert torch.equal(x, cases["encoder_input"])  # OpenCV's INTER_AREA, bit for bit
    predictor = Predictor(litemedsam)
    predictor.set_image(cases["image"].numpy())
    for case in cases["cases"]:
        masks, _, _ = predictor.predict(
            box=case["box"], multimask_output=case["name"].endswith("multimask")
        )
        assert_mask_matches(masks[0], case["mask"].numpy(), case["name"])


@pytest.fixture(scope="module")
def tiny_predictor(tiny_checkpoint):
    predictor = Predictor(load_model(tiny_checkpoint, device="cpu"))
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(-1000, 1000, size=(40, 60)).astype(np.int16))
    return predictor


def test_output_shapes_and_best_mask(tiny_predictor):
    masks, scores, low = tiny_predictor.predict(box=[5, 5, 30, 20])
    assert masks.shape == (1, 40, 60) and masks.dtype == bool
    assert scores.shape == (1,) and low.shape == (1, 64, 64)
    all_masks, all_scores, _ = tiny_predictor.predict(box=[5, 5, 30, 20], return_all_masks=True)
    assert all_masks.shape == (3, 40, 60)
    assert np.isclose(scores[0], all_scores.max())
    single, _, _ = tiny_predictor.predict(box=[5, 5, 30, 20], multimask_output=False)
    assert single.shape == (1, 40, 60)
    logits, _, _ = tiny_predictor.predict(box=[5, 5, 30, 20], return_logits=True)
    assert logits.dtype == np.float32 and np.array_equal(logits > 0, masks)


def test_several_boxes_in_one_call_match_one_by_one(tiny_predictor):
    boxes = np.array([[5, 5, 30, 20], [20, 10, 55, 38]], np.float32)
    masks, scores, low = tiny_predictor.predict(box=boxes, multimask_output=False)
    assert masks.shape == (2, 1, 40, 60) and scores.shape == (2, 1)
    for i, box in enumerate(boxes):
        one, s, lo = tiny_predictor.predict(box=box, multimask_output=False)
        assert np.allclose(lo, low[i], atol=1e-4)
        assert np.allclose(s, scores[i], atol=1e-5)


def test_reversed_box_is_normalised(tiny_predictor):
    a, _, _ = tiny_predictor.predict(box=[5, 5, 30, 20], multimask_output=False)
    b, _, _ = tiny_predictor.predict(box=[30, 20, 5, 5], multimask_output=False)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(point_coords=[[70, 10]], point_labels=[1]), r"point \(70, 10\) lies outside"),
        (dict(point_coords=[[-1, 10]], point_labels=[1]), "outside the 60 x 40 image"),
        (dict(box=[0, 0, 61, 20]), "reaches outside"),
        (dict(point_coords=[[10, 10]], point_labels=[2]), "label 2: expected 1"),
        (dict(point_coords=[[10, 10], [5, 5]], point_labels=[1]), "2 points but labels"),
        (dict(point_coords=[[np.nan, 10]], point_labels=[1]), "NaN"),
        (dict(), "empty prompt"),
        (dict(box=[5, 5, 5.5, 5.5]), "is empty"),
        (dict(box=[1, 2, 3]), "expected .x0, y0, x1, y1."),
        (dict(box=[5, 5, 30, 20], mask_input=np.zeros((1, 32, 32))), "mask_input of shape"),
        (dict(point_coords=[[10, 10]], point_labels=[1]), None),
    ],
)
def test_prompt_validation(tiny_predictor, kwargs, message):
    if message is None:
        tiny_predictor.predict(**kwargs)
        return
    with pytest.raises(PromptError, match=message):
        tiny_predictor.predict(**kwargs)


def test_predict_before_set_image(tiny_checkpoint):
    with pytest.raises(PromptError, match="no image set"):
        Predictor(load_model(tiny_checkpoint, device="cpu")).predict(box=[0, 0, 5, 5])


def test_nan_and_inf_in_the_image(tiny_checkpoint):
    image = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    image[3:6, 3:6] = np.nan
    image[10, :] = np.inf
    predictor = Predictor(load_model(tiny_checkpoint, device="cpu"))
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=[5, 5, 30, 20])
    assert np.isfinite(scores).all()
    embedding = predictor.get_image_embedding()
    assert np.isfinite(embedding.numpy()).all()
    assert embedding.is_contiguous()  # as SAM's predictor gives it: .view() works on it
    embedding.view(1, embedding.shape[1], -1)
    predictor.reset_image()
    assert not predictor.is_image_set


def test_3d_array_is_refused(tiny_checkpoint):
    from sammed2d.errors import ImageError

    predictor = Predictor(load_model(tiny_checkpoint, device="cpu"))
    with pytest.raises(ImageError, match="expected .H, W. or .H, W, 3."):
        predictor.set_image(np.zeros((4, 40, 60), np.int16))


def test_masks_near_boxes_are_the_whole_maps_there(litemedsam):
    """Boxes decoded with masks only around them (propagation's steps): the same logits in
    each box's region, OUTSIDE beyond it, the same masks; a region its mask reaches the
    edge of gets the whole map."""
    from sammed2d.models.mask_decoder import OUTSIDE
    from sammed2d.phantom import ct_phantom
    from sammed2d.predictor import decode

    ct, labels, _, _ = ct_phantom(shape=(200, 160, 3))
    predictor = Predictor(litemedsam)
    predictor.set_image(ct[:, :, 1], preset="abdomen")
    emb = predictor._image
    boxes = []
    for organ in np.unique(labels[:, :, 1])[1:]:
        rows, cols = np.nonzero(labels[:, :, 1] == organ)
        boxes.append([cols.min(), rows.min(), cols.max(), rows.max()])
    boxes = np.array(boxes, np.float32)
    whole, iou = decode(litemedsam, emb, boxes=boxes, multimask_output=None)
    near, iou_near = decode(litemedsam, emb, boxes=boxes, multimask_output=None, near_boxes=True)
    assert torch.equal(iou, iou_near)
    inside = near != OUTSIDE
    assert inside.any() and not inside.all()
    assert (near[inside] - whole[inside]).abs().max() < 1e-4
    assert (whole[~inside] <= 0).all()  # nothing of the masks was left out
    for k in range(len(boxes)):
        a = emb.geometry.logits_to_original(whole[k : k + 1]) > 0
        b = emb.geometry.logits_to_original(near[k : k + 1]) > 0
        assert torch.equal(a, b)
    # A region far too tight for its mask (inside the largest organ's): the whole map.
    largest = int(np.argmax([(whole[k, 0] > 0).sum() for k in range(len(boxes))]))
    ys, xs = np.nonzero((whole[largest, 0] > 0).numpy())
    ty, tx = int(np.median(ys)) // 4, int(np.median(xs)) // 4
    region = (ty - 4, ty + 4, tx - 4, tx + 4)
    assert (
        whole[largest, 0, 4 * region[0] : 4 * region[1], 4 * region[2] : 4 * region[3]] > 0
    ).all()
    with torch.inference_mode():
        box = torch.from_numpy(emb.geometry.boxes_to_input(boxes[largest : largest + 1]))
        sparse, dense = litemedsam.prompt_encoder(None, box, None)
        pe = litemedsam.prompt_encoder.get_dense_pe()
        args = (emb.embedding, pe, sparse, dense, None)
        full = litemedsam.mask_decoder(*args)[0]
        tight = litemedsam.mask_decoder(*args, regions=[region])[0]
    assert torch.equal(tight, full)
