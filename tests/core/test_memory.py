"""Freed activation memory is reused instead of faulted in again."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sammed2d.memory import reuse_freed_memory

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc malloc only",
)


@linux_glibc
def test_building_a_model_leaves_malloc_alone_in_a_host_process():
    code = (
        "from sammed2d import build_model; from sammed2d import memory; "
        "build_model('sam-med2d', embed_dim=32, depth=2, num_heads=2, global_attn=[1]); "
        "print(memory._applied)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SAMMED2D_TUNE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr


# The convolution of benchmarks/page_faults.py: a 64 MB activation made and freed on every
# pass, as the encoders' are, its page faults counted in a fresh process.
_spec = importlib.util.spec_from_file_location(
    "page_faults_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "page_faults.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@linux_glibc
def test_tuning_keeps_freed_pages_for_reuse():
    """Without the tuning every pass maps its activations afresh (196,620 faults for three
    passes here); with it they reuse the freed pages (16,384: one 64 MB block mapped once
    more, where a small allocation took part of the freed one). Each in a process of its
    own: within the test session the heap's state depended on the tests run before (a
    bare loop of 64 MB tensors grew the heap on every tensor after other tests had run)."""
    assert reuse_freed_memory()
    (untuned,), (tuned,) = (
        bench.faults(bench.CONVOLUTION, False),
        bench.faults(bench.CONVOLUTION, True),
    )
    assert untuned > 3 * 16_384, untuned
    assert tuned < untuned / 4, (tuned, untuned)


@linux_glibc
def test_opt_out_leaves_malloc_alone():
    code = "from sammed2d.memory import reuse_freed_memory; print(reuse_freed_memory())"
    env = {**os.environ, "SAMMED2D_TUNE_MALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
