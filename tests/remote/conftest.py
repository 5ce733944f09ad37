"""A real `sammed2d serve` application on a free loopback port, with a small real model."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model, **config):
    """`create_app` served by uvicorn in a thread; yields (url, app state)."""
    import uvicorn

    from sammed2d.server import ServerConfig, create_app

    app = create_app(ServerConfig(**config), model=model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.sammed2d
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def tiny_model():
    from sammed2d import build_model

    torch.manual_seed(0)
    model = build_model(
        "sam-med2d", embed_dim=32, depth=2, num_heads=2, global_attn=(1,), adapters=True
    )
    return model.eval()


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(tiny_model, api_key="secret-key") as (url, state):
        yield url, state
