"""Clients of `sammed2d serve`: the command line, a server that dies, a client without torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sammed2d.cli import main
from sammed2d.io import Volume, read_volume, write_volume
from sammed2d.objects import ObjectPrompts, SlicePrompt
from sammed2d.propagate import propagate
from sammed2d.remote import Client, RemoteError
from sammed2d.segments import read_sidecar

from .conftest import free_port

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def write_case(folder: Path, slices: int = 10):
    rng = np.random.default_rng(3)
    array = rng.normal(-80, 8, (48, 40, slices)).astype(np.int16)
    array[12:30, 10:26, 2 : slices - 2] = 160
    image = write_volume(folder / "ct.nii.gz", array, Volume(array, AFFINE))
    prompts = folder / "prompts.json"
    middle = slices // 2
    prompts.write_text(
        json.dumps(
            {
                "axis": 2,
                "objects": [
                    {
                        "id": 2,
                        "name": "liver",
                        "range": [1, slices - 2],
                        "slices": {str(middle): {"box": [8, 10, 28, 32]}},
                    }
                ],
            }
        )
    )
    return image, prompts


@pytest.fixture(scope="module")
def served_checkpoint(tmp_path_factory, tiny_checkpoint):
    """`sammed2d serve` in its own process, as people run it."""
    port = free_port()
    env = {**os.environ, "SAMMED2D_API_KEY": "k3y"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sammed2d.cli", "serve", "--model", str(tiny_checkpoint),
             "--device", "cpu", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            Client(url, "k3y").info()
            break
        except RemoteError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    f"sammed2d serve did not start: {log.read_text(encoding='utf-8')[-2000:]}"
                )
            time.sleep(0.2)
    yield url, proc
    proc.kill()
    proc.wait(10)


def test_cli_server_option_gives_the_local_labels(
    tmp_path, capsys, served_checkpoint, tiny_checkpoint
):
    url, _ = served_checkpoint
    image, prompts = write_case(tmp_path)
    remote_out, local_out = tmp_path / "remote.nii.gz", tmp_path / "local.nii.gz"
    argv = ["propagate", str(image), "--prompts", str(prompts)]
    assert main([*argv, "--out", str(remote_out), "--server", url, "--api-key", "k3y"]) == 0
    assert main([*argv, "--out", str(local_out), "--model", str(tiny_checkpoint)]) == 0
    remote, local = read_volume(remote_out), read_volume(local_out)
    assert remote.array.any() and np.array_equal(remote.array, local.array)
    np.testing.assert_array_equal(remote.affine, local.affine)
    assert read_sidecar(remote_out)[2].name == "liver"

    seg = ["segment", str(image), "--slice", "5", "--box", "8", "10", "28", "32"]
    assert main([*seg, "--out", str(tmp_path / "r.png"), "--server", url, "--api-key", "k3y"]) == 0
    assert main([*seg, "--out", str(tmp_path / "l.png"), "--model", str(tiny_checkpoint)]) == 0
    assert (tmp_path / "r.png").read_bytes() == (tmp_path / "l.png").read_bytes()

    capsys.readouterr()
    assert main([*seg, "--out", str(tmp_path / "x.png"), "--server", url, "--api-key", "no"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 401" in err[0] and not (tmp_path / "x.png").exists()


def test_batch_through_the_server(tmp_path, served_checkpoint, tiny_checkpoint):
    pytest.importorskip("dask.distributed")
    from sammed2d.batch import propagate_case, read_manifest

    url, _ = served_checkpoint
    image, prompts = write_case(tmp_path)
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"image,prompts,labels\n{image.name},{prompts.name},\n")
    (case,) = read_manifest(manifest)
    remote = propagate_case(case, str(tmp_path / "remote"), server=url, api_key="k3y")
    local = propagate_case(case, str(tmp_path / "local"), model=str(tiny_checkpoint))
    assert remote.status == "done" == local.status and remote.slices == local.slices > 0
    a = read_volume(tmp_path / "remote" / "ct_labels.nii.gz").array
    b = read_volume(tmp_path / "local" / "ct_labels.nii.gz").array
    assert np.array_equal(a, b)


def test_a_server_killed_mid_propagation(tmp_path, capsys, tiny_checkpoint):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sammed2d.cli", "serve", "--model", str(tiny_checkpoint),
         "--device", "cpu", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                Client(url).info()
                break
            except RemoteError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        image, prompts = write_case(tmp_path, slices=1000)
        out = tmp_path / "out" / "labels.nii.gz"

        def kill_when_running():
            watcher = Client(url)
            while proc.poll() is None:
                try:
                    if watcher.info()["jobs_running"]:
                        time.sleep(0.3)  # let the client open its progress stream
                        proc.send_signal(signal.SIGKILL)
                        return
                except RemoteError:
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        code = main(["propagate", str(image), "--prompts", str(prompts), "--server", url,
                     "--out", str(out)])  # fmt: skip
        killer.join(30)
    finally:
        proc.kill()
        proc.wait(10)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    # Mid-stream it "stopped answering"; on a loaded machine the kill can land before the
    # stream opens, and then the server is "unreachable": one line either way.
    assert len([e for e in err if "error" in e]) == 1
    assert "stopped answering" in err[-1] or "unreachable" in err[-1]
    assert not out.exists() and not list(out.parent.glob("*")) if out.parent.exists() else True


NO_TORCH = """
import importlib.abc, sys, json
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
import numpy as np
from sammed2d.remote import Client
from sammed2d.objects import ObjectPrompts, SlicePrompt
import sammed2d.cli, sammed2d.io, sammed2d.labelfiles, sammed2d.prompt_files
rng = np.random.default_rng(3)
volume = rng.normal(-80, 8, (48, 40, 10)).astype(np.int16)
volume[12:30, 10:26, 2:8] = 160
client = Client(sys.argv[1], sys.argv[2])
objects = [ObjectPrompts(1, {5: SlicePrompt(box=np.array([8.0, 10, 28, 32]))}, (1, 8))]
result = client.propagate(volume, objects)
np.save(sys.argv[3], result.labels)
print(json.dumps({"torch": "torch" in sys.modules, "reached": result.reached[1]}))
"""


def test_a_client_without_torch(tmp_path, served_checkpoint, tiny_checkpoint):
    from sammed2d import load_model

    url, _ = served_checkpoint
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(NO_TORCH))
    out = subprocess.run(
        [sys.executable, str(script), url, "k3y", str(tmp_path / "labels.npy")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    rng = np.random.default_rng(3)
    volume = rng.normal(-80, 8, (48, 40, 10)).astype(np.int16)
    volume[12:30, 10:26, 2:8] = 160
    objects = [ObjectPrompts(1, {5: SlicePrompt(box=np.array([8.0, 10, 28, 32]))}, (1, 8))]
    local = propagate(volume, objects, load_model(str(tiny_checkpoint), device="cpu"))
    assert np.array_equal(np.load(tmp_path / "labels.npy"), local.labels)


def test_serve_refuses_to_listen_openly_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("SAMMED2D_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err


def test_without_torch_the_cli_says_so_in_one_line(tmp_path):
    image, prompts = write_case(tmp_path)
    script = textwrap.dedent(NO_TORCH.split("import numpy as np")[0]) + textwrap.dedent(
        f"""
        from sammed2d.cli import main
        raise SystemExit(main(["propagate", {str(image)!r}, "--prompts", {str(prompts)!r},
                               "--out", {str(tmp_path / "x.nii.gz")!r}]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "needs PyTorch" in out.stderr
