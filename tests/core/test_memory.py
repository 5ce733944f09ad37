"""Freed activation memory is reused instead of faulted in again."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

from sammed2d.memory import reuse_freed_memory

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc malloc only",
)


def page_faults_of(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


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


@linux_glibc
def test_tuning_keeps_freed_pages_for_reuse():
    assert reuse_freed_memory()

    def activations():
        for _ in range(5):
            torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB, freed at once

    activations()
    # Without the tuning each 64 MB tensor is a fresh mmap: 16,384 faults apiece.
    assert page_faults_of(activations) < 1000


@linux_glibc
def test_opt_out_leaves_malloc_alone():
    code = "from sammed2d.memory import reuse_freed_memory; print(reuse_freed_memory())"
    env = {**os.environ, "SAMMED2D_TUNE_MALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
