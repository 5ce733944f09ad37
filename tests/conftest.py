"""Shared fixtures: the ../shared parity data (skipped cleanly when absent) and models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
ABDOMEN_CT = SHARED / "data" / "abdomen_ct"


# The SAM-Med2D fixture cases the official predictor ran with multimask output.
SAMMED2D_MULTIMASK_CASES = frozenset({"box", "one_point", "box_and_point"})


def predict_fixture_case(predictor, case: dict, multimask_cases):
    """(masks, scores, low-res logits) for a fixture case's prompts, as the reference asked."""
    return predictor.predict(
        case.get("points"),
        case.get("labels"),
        case.get("box"),
        case["mask_input"][0].numpy() if "mask_input" in case else None,
        multimask_output=case["name"] in multimask_cases,
    )


def assert_mask_matches(found, expected, name: str) -> None:
    """A mask against the reference implementation's. Pixels whose logit lies within float
    noise of 0 may flip between CPUs (kernels differ by instruction set): at most one in
    10,000 (SAM-Med2D's one-point case flips one of 126,000 on an AVX2 CPU)."""
    flipped = int(np.logical_xor(found, expected).sum())
    assert flipped <= np.size(found) // 10000, (name, flipped)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} not available (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small SAM-Med2D-shaped model (random weights) saved as a bare state dict."""
    from sammed2d import build_model

    torch.manual_seed(0)
    model = build_model(
        "sam-med2d", embed_dim=32, depth=2, num_heads=2, global_attn=(1,), adapters=True
    )
    path = tmp_path_factory.mktemp("weights") / "tiny_sammed2d.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def litemedsam():
    from sammed2d import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def shared_cache():
    """One embedding cache for the session: tests on the same slices embed them once."""
    from sammed2d import EmbeddingCache

    return EmbeddingCache(max_bytes=2 << 30)
