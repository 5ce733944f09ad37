"""`sammed2d serve` on loopback: what a remote click costs over a local one, and a load test.

    python benchmarks/remote.py [--model litemedsam] [--clicks 200] [--clients 4]

The server runs as its own process (`sammed2d serve`, as people run it) on this machine;
the clients are threads here. Volume: the TotalSegmentator example CT from ../shared, or a
generated CT phantom when ../shared is absent.

1. Overhead: the same box on the same, already embedded slice, 40 times locally
   (`segment_slice` with the model in this process) and 40 times through the server; the
   difference of the medians and of the 95th percentiles is what the network path adds
   (upload and session set-up are done once before timing, as in napari).
2. Load: N clients, each with its own volume (the CT shifted by one slice per client so
   the content differs), send `clicks` boxes in all, on random slices, at once. Printed:
   wall time, clicks per second, latency percentiles, errors, and the server's resident
   memory before and after (bounded by --max-memory).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from sammed2d.objects import SlicePrompt
from sammed2d.remote import Client, RemoteError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"


def load_case():
    from sammed2d.io import read_volume

    if (SHARED / "ct.nii.gz").exists():
        ct, labels = read_volume(SHARED / "ct.nii.gz"), read_volume(SHARED / "labels.nii.gz")
        return ct.array, ct.affine, labels.array, "TotalSegmentator example CT"
    from sammed2d.phantom import ct_phantom

    ct, labels, affine, _ = ct_phantom()
    return ct, affine, labels, "generated CT phantom"


def boxes_of(labels):
    """(slice, box) for every slice where label 1 shows, from the label itself."""
    out = []
    for k in range(labels.shape[2]):
        ys, xs = np.nonzero(labels[:, :, k] == 1)
        if len(xs):
            out.append((k, np.array([ys.min(), xs.min(), ys.max(), xs.max()], float)))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--clicks", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-memory", type=float, default=2.0, help="server bound, GB")
    args = ap.parse_args()

    ct, affine, labels, source = load_case()
    # prompts in the slice's raw (x, y) pixels: x indexes axis 1, y axis 0
    prompts = [(k, SlicePrompt(box=b[[1, 0, 3, 2]])) for k, b in boxes_of(labels)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "sammed2d.cli", "serve", "--model", args.model,
         "--device", "cpu", "--port", str(port), "--max-memory", str(args.max_memory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                info = Client(url).info()
                break
            except RemoteError:
                if server.poll() is not None:
                    raise SystemExit("sammed2d serve did not start") from None
                time.sleep(0.3)
        print(
            f"server: {info['model']['name']} on {info['device']} ({info['precision']}), "
            f"sammed2d {info['sammed2d']}, torch {info['torch']}; volume: {source} "
            f"{ct.shape}; {os.cpu_count()} CPUs shared by server and clients"
        )
        overhead(url, args.model, ct, affine, prompts)
        load(url, server.pid, ct, affine, prompts, args.clicks, args.clients, args.max_memory)
    finally:
        server.terminate()
        server.wait(30)


def overhead(url, model_name, ct, affine, prompts) -> None:
    from sammed2d import EmbeddingCache, load_model
    from sammed2d.intensity import intensity_range
    from sammed2d.propagate import segment_slice

    model = load_model(model_name, device="cpu")
    cache = EmbeddingCache()
    value_range = intensity_range(ct, "auto")
    index, prompt = prompts[len(prompts) // 2]
    client = Client(url)
    local_mask, _ = segment_slice(
        ct, index, prompt, model, affine=affine, value_range=value_range, cache=cache
    )
    remote_mask, _ = client.segment_slice(ct, index, prompt, affine=affine)  # embeds, uploads
    same = np.array_equal(local_mask, remote_mask)
    local, remote = [], []
    for _ in range(40):
        t = time.perf_counter()
        segment_slice(ct, index, prompt, model, affine=affine, value_range=value_range, cache=cache)
        local.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.segment_slice(ct, index, prompt, affine=affine)
        remote.append(time.perf_counter() - t)
    p50 = statistics.median(remote) * 1000 - statistics.median(local) * 1000
    p95 = pct(remote, 95) - pct(local, 95)
    print(
        f"click on an embedded slice, 40 each: local median {pct(local, 50):.1f} ms "
        f"(p95 {pct(local, 95):.1f}), remote median {pct(remote, 50):.1f} ms "
        f"(p95 {pct(remote, 95):.1f}); added by the server: median {p50:+.1f} ms, "
        f"p95 {p95:+.1f} ms (goal <= 30 ms); masks identical: {same}"
    )


def load(url, pid, ct, affine, prompts, clicks, clients, max_memory) -> None:
    volumes = [np.roll(ct, c, axis=2) for c in range(clients)]
    before = rss_mb(pid)
    latencies, errors = [], []
    lock = threading.Lock()
    per_client = clicks // clients

    def run(c):
        client = Client(url)
        rng = np.random.default_rng(c)
        for _ in range(per_client):
            index, prompt = prompts[rng.integers(len(prompts))]
            t = time.perf_counter()
            try:
                mask, _ = client.segment_slice(
                    volumes[c], (index + c) % ct.shape[2], prompt, affine=affine
                )
                with lock:
                    latencies.append(time.perf_counter() - t)
            except RemoteError as exc:
                with lock:
                    errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = rss_mb(pid)
    info = Client(url).info()
    print(
        f"load: {clients} clients, {len(latencies) + len(errors)} clicks on random slices "
        f"(most not yet embedded) in {wall:.1f} s = {len(latencies) / wall:.1f} clicks/s; "
        f"latency median {pct(latencies, 50):.0f} ms, p95 {pct(latencies, 95):.0f} ms, "
        f"max {pct(latencies, 100):.0f} ms; errors {len(errors)}"
        + (f" (first: {errors[0]})" if errors else "")
    )
    print(
        f"server memory: resident {before:.0f} MB before, {after:.0f} MB after; held "
        f"{info['memory_bytes'] / 2**20:.0f} MB of volumes and embeddings "
        f"(bound {max_memory:.1f} GB), {info['sessions']} sessions"
    )


if __name__ == "__main__":
    main()
