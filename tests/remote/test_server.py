"""`sammed2d serve` and `sammed2d.remote.Client` against the local engine, over real HTTP."""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit

import numpy as np
import pytest

from sammed2d.errors import PromptError
from sammed2d.objects import ObjectPrompts, PropagationSettings, SlicePrompt
from sammed2d.propagate import propagate, segment_slice
from sammed2d.remote import Client, RemoteError
from sammed2d.server import DeviceQueue
from sammed2d.wire import settings_to_json

from .conftest import running_server

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def block_volume(seed=0, shape=(48, 40, 10)):
    rng = np.random.default_rng(seed)
    volume = rng.normal(-80, 8, shape).astype(np.int16)
    volume[12:30, 10:26, 2:8] = 160
    return volume


def objects():
    return [
        ObjectPrompts(3, {4: SlicePrompt(box=np.array([8.0, 10, 28, 32]))}, (1, 8), "block"),
        ObjectPrompts(5, {5: SlicePrompt(points=np.array([[18.0, 20]]), labels=np.array([1]))}),
    ]


def test_remote_results_equal_local_bit_for_bit(server, tiny_model):
    url, _ = server
    client = Client(url, api_key="secret-key")
    volume = block_volume()
    prompt = SlicePrompt(box=np.array([8.0, 10, 28, 32]))
    remote_mask, remote_score = client.segment_slice(volume, 4, prompt, affine=AFFINE)
    local_mask, local_score = segment_slice(volume, 4, prompt, tiny_model, affine=AFFINE)
    assert remote_mask.any() and np.array_equal(remote_mask, local_mask)
    assert remote_score == local_score

    settings = PropagationSettings(box_margin=4.0)
    seen = []
    remote = client.propagate(
        volume, objects(), affine=AFFINE, settings=settings, progress=lambda *dt: seen.append(dt)
    )
    local = propagate(volume, objects(), tiny_model, affine=AFFINE, settings=settings)
    assert np.array_equal(remote.labels, local.labels) and remote.labels.dtype == local.labels.dtype
    assert remote.reached == local.reached
    for oid in local.scores:
        np.testing.assert_array_equal(remote.scores[oid], local.scores[oid])
    done, total = seen[-1]  # progress came back to the end of the run
    assert total > 0 and done == total and len(seen) > 1

    # A stepped walk travels; the default step is left out of the request, so a server
    # from before the setting still accepts it.
    stepped = PropagationSettings(slice_step=2)
    remote = client.propagate(volume, objects(), affine=AFFINE, settings=stepped)
    local = propagate(volume, objects(), tiny_model, affine=AFFINE, settings=stepped)
    assert np.array_equal(remote.labels, local.labels)
    assert remote.slice_step == local.slice_step == 2
    assert not {"slice_step", "step_distance"} & set(settings_to_json(PropagationSettings()))
    assert settings_to_json(stepped)["slice_step"] == 2
    per_slice = PropagationSettings(step_distance=None)  # a value apart from the default
    assert settings_to_json(per_slice)["step_distance"] is None
    # 1 mm slices, where the default would step 3 slices: the setting must reach the server
    thin = np.diag([0.8, 0.8, 1.0, 1.0])
    remote = client.propagate(volume, objects(), affine=thin, settings=per_slice)
    local = propagate(volume, objects(), tiny_model, affine=thin, settings=per_slice)
    assert np.array_equal(remote.labels, local.labels)
    assert remote.slice_step == local.slice_step == 1
    # the default step on them, 3 slices (3 mm), is reported back
    assert client.propagate(volume, objects(), affine=thin).slice_step == 3

    # A given mask travels too (napari corrections send one).
    given = np.zeros(volume.shape[:2], bool)
    given[14:28, 12:24] = True
    with_mask = [ObjectPrompts(1, {3: SlicePrompt(mask=given)}, (2, 5))]
    remote = client.propagate(volume, with_mask, affine=AFFINE)
    local = propagate(volume, with_mask, tiny_model, affine=AFFINE)
    assert np.array_equal(remote.labels, local.labels)


def test_2d_predict_equals_the_local_predictor(server, tiny_model):
    from sammed2d import Predictor

    url, _ = server
    image = block_volume()[..., 4].astype(np.float32)
    box = np.array([8.0, 10, 28, 32])
    masks, scores, logits = Client(url, "secret-key").predict(image, box=box, multimask_output=True)
    predictor = Predictor(tiny_model)
    predictor.set_image(image)
    want = predictor.predict(None, None, box, multimask_output=True)
    assert np.array_equal(masks, want[0]) and np.array_equal(scores, want[1])
    assert np.array_equal(logits, want[2])


def test_key_is_required_and_checked(server):
    url, _ = server
    with pytest.raises(RemoteError, match="API key.*HTTP 401"):
        Client(url, api_key="").info()
    with pytest.raises(RemoteError, match="HTTP 401"):
        Client(url, api_key="secret-kez").info()
    info = Client(url, api_key="secret-key").info()
    assert info["model"]["family"] == "sam-med2d" and info["device"] == "cpu"


def test_the_key_may_come_from_the_environment(server, monkeypatch):
    url, _ = server
    monkeypatch.setenv("SAMMED2D_API_KEY", "secret-key")
    assert Client(url).info()["limits"]["max_sessions"] > 0


def raw(url, method, path, body=None, headers=None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(method, path, body, {"Authorization": "Bearer secret-key", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_http_errors_are_one_line(server):
    url, _ = server
    client = Client(url, "secret-key")
    body = b'{"index": 1, "prompt": {}}'
    json_type = {"Content-Type": "application/json"}
    status, data = raw(url, "POST", "/sessions/not-a-session/segment", body, json_type)
    assert status == 404 and "unknown or expired" in json.loads(data)["detail"]
    volume = block_volume()
    with pytest.raises(RemoteError, match=r"outside.*HTTP 422") as err:
        client.segment_slice(volume, 4, SlicePrompt(box=np.array([-50.0, -50, -40, -40])))
    assert "\n" not in str(err.value)
    with pytest.raises(RemoteError, match=r"slice 99 is outside.*HTTP 422"):
        client.segment_slice(volume, 99, SlicePrompt(box=np.array([8.0, 10, 28, 32])))
    status, data = raw(url, "PUT", "/volumes/" + "0" * 64, b"not zlib at all")
    assert status == 422 and "zlib" in json.loads(data)["detail"]
    with pytest.raises(RemoteError, match=r"box_margin '5': expected a number.*HTTP 422"):
        client.propagate(volume, objects(), settings=PropagationSettings(box_margin="5"))
    status, _ = raw(url, "GET", "/openapi.json")
    assert status == 200


def test_a_pickle_is_never_loaded(server, tmp_path):
    import io
    import zlib

    url, _ = server
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    status, data = raw(url, "PUT", "/volumes/" + "1" * 64, zlib.compress(buffer.getvalue()))
    assert status == 422 and "not a plain .npy" in json.loads(data)["detail"]


def test_uploads_beyond_the_limit_get_413(tiny_model):
    with running_server(tiny_model, max_upload=200_000) as (url, _):
        client = Client(url)
        big = np.random.default_rng(0).normal(size=(64, 64, 20)).astype(np.float32)  # 320 kB
        with pytest.raises(RemoteError, match="HTTP 413"):
            client.upload(big)
        small = block_volume()
        assert client.upload(small) == client.digest(small)


def test_a_volume_is_uploaded_once(server):
    url, state = server
    client = Client(url, "secret-key")
    volume = block_volume(seed=7)
    client.segment_slice(volume, 4, SlicePrompt(box=np.array([8.0, 10, 28, 32])))
    before = dict(state.volumes)
    other = Client(url, "secret-key")  # another client with the same scan: no second copy
    other.segment_slice(volume.copy(), 5, SlicePrompt(box=np.array([8.0, 10, 28, 32])))
    assert client.digest(volume) in state.volumes and len(state.volumes) == len(before)


def test_sessions_are_isolated(server, tiny_model):
    url, state = server
    a, b = Client(url, "secret-key"), Client(url, "secret-key")
    va, vb = block_volume(seed=1), block_volume(seed=2, shape=(40, 48, 9))
    box = SlicePrompt(box=np.array([8.0, 10, 28, 32]))
    results = {}

    def run(name, client, volume):
        results[name] = client.propagate(volume, [ObjectPrompts(1, {4: box}, (1, 7))])

    threads = [threading.Thread(target=run, args=x) for x in (("a", a, va), ("b", b, vb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, volume in (("a", va), ("b", vb)):
        local = propagate(volume, [ObjectPrompts(1, {4: box}, (1, 7))], tiny_model)
        assert np.array_equal(results[name].labels, local.labels)
    sid_a = a.session(va, 2)
    assert sid_a != b.session(vb, 2) and len(sid_a) >= 20  # random, unguessable ids
    status, _ = raw(url, "GET", f"/sessions/{sid_a}x/jobs/none/result")
    assert status == 404


def test_cancel_returns_the_slices_finished(server):
    url, _ = server
    volume = block_volume(shape=(48, 40, 30))
    calls = []

    def stop():
        calls.append(1)
        return True

    result = Client(url, "secret-key").propagate(
        volume, [ObjectPrompts(1, {15: SlicePrompt(box=np.array([8.0, 10, 28, 32]))}, (0, 29))],
        should_stop=stop,
    )  # fmt: skip
    assert calls and result.cancelled
    assert (result.labels > 0).any(axis=(0, 1)).sum() < 30


def test_eviction_keeps_memory_under_the_bound(tiny_model):
    bound = 4 << 20  # 2 MiB for volumes, 2 MiB for embeddings
    with running_server(tiny_model, max_memory=bound, max_sessions=8) as (url, state):
        client = Client(url)
        box = SlicePrompt(box=np.array([8.0, 10, 28, 32]))
        volumes = [block_volume(seed=i, shape=(64, 64, 24)) for i in range(20)]  # 196 kB each
        for volume in volumes:
            client.segment_slice(volume, 4, box)
            info = client.info()
            assert info["memory_bytes"] <= bound and info["sessions"] <= 8
        assert len(state.sessions) <= 8
        # The first session was dropped: the client opens it again, with the same answer.
        mask, _ = client.segment_slice(volumes[0], 4, box)
        assert mask.any() and client.info()["memory_bytes"] <= bound


def test_the_device_queue_lets_waiting_requests_through_a_long_job():
    queue = DeviceQueue()
    order = []
    in_job = threading.Event()
    clicked = threading.Event()

    def long_job():
        with queue.turn():
            in_job.set()
            for step in range(3):
                order.append(f"job {step}")
                clicked.wait(5) if step == 0 else None
                queue.step_aside()

    def click():
        in_job.wait(5)
        threading.Timer(0.1, clicked.set).start()
        with queue.turn():
            order.append("click")

    threads = [threading.Thread(target=long_job), threading.Thread(target=click)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order[:2] == ["job 0", "click"] and order[2:] == ["job 1", "job 2"]


def test_wire_prompts_refuse_junk():
    from sammed2d.wire import prompt_from_json

    with pytest.raises(PromptError):
        prompt_from_json({"box": "not numbers"}, 1 << 20)
    with pytest.raises(PromptError):
        prompt_from_json(["a list"], 1 << 20)


def test_remote_gives_ct_objects_the_same_auto_windows(server, tiny_model):
    url, _ = server
    client = Client(url, api_key="secret-key")
    ct = np.full((48, 48, 5), 40, np.int16)
    ct[4:24, 4:26, :] = -850  # a lung
    ct[8:12, 8:22, :] = -700
    lung = [ObjectPrompts(1, {2: SlicePrompt(box=np.array([3.0, 3, 26, 24]))}, (1, 3))]
    remote = client.propagate(ct, lung, affine=AFFINE)
    local = propagate(ct, lung, tiny_model, affine=AFFINE)
    assert remote.windows == local.windows == {1: "lung"}
    assert np.array_equal(remote.labels, local.labels)
    mask, score = client.segment_slice(ct, 2, lung[0].slices[2], affine=AFFINE)
    assert np.array_equal(
        mask, segment_slice(ct, 2, lung[0].slices[2], tiny_model, affine=AFFINE)[0]
    )
