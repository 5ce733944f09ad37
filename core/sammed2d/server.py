"""`sammed2d serve`: one model on one device, many thin clients over HTTP.

A client uploads a volume once (named by its content hash, so a second upload of the same
volume is skipped), opens a session on it, and sends prompts. Model work from all clients
goes through one queue per device, first come first served; a long propagation steps aside
after every slice for requests that wait, and embedding ahead runs only while the device
is idle. Sessions hold the volume and its window; embeddings live in one cache keyed by
image content and model, bounded in bytes. Sessions that idle past their time-to-live, or
that do not fit the memory bound, are dropped least recently used first.

Security: requests carry numbers and JSON only (arrays are .npy read with
allow_pickle=False). A key is required to listen on anything but loopback and is compared
in constant time. Session and job ids are random: one client cannot reach another's work.
TLS is left to a reverse proxy (see the README).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and the request models are defined inside `create_app`.
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
import traceback
from collections import OrderedDict, deque
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .errors import Cancelled, PromptError, SamMed2DError
from .intensity import WINDOW_WORDS, is_window
from .wire import (
    TooLarge,
    array_digest,
    encode_array,
    objects_from_wire,
    prompt_from_json,
    result_to_json,
    unpack_array,
)

log = logging.getLogger("sammed2d.server")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServerConfig:
    model: str = "litemedsam"
    device: str = "auto"
    precision: str = "fp32"
    preprocessing: str | None = None  # a checkpoint's input pipeline, when not recognised
    api_key: str | None = None
    max_sessions: int = 32
    max_memory: int = 8 << 30  # bytes: volumes plus embeddings held in memory
    max_upload: int = 2 << 30  # bytes, once decompressed
    session_ttl: float = 3600.0  # seconds idle before a session is dropped
    cache_dir: str | None = None  # embeddings kept on disk between runs


class DeviceQueue:
    """Model work in arrival order, one at a time; background work only when idle."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._serving = 0  # the ticket whose turn it is
        self._busy = False
        self._waiting = 0

    def _wait_turn(self) -> None:
        ticket = next(self._tickets)
        self._waiting += 1
        while self._busy or ticket != self._serving:
            self._cond.wait()
        self._waiting -= 1
        self._busy = True

    def _release(self) -> None:
        self._busy = False
        self._serving += 1
        self._cond.notify_all()

    @contextmanager
    def turn(self):
        with self._cond:
            self._wait_turn()
        try:
            yield
        finally:
            with self._cond:
                self._release()

    def step_aside(self) -> None:
        """Inside a turn: let the requests that wait go first, then continue."""
        with self._cond:
            if self._waiting:
                self._release()
                self._wait_turn()

    @contextmanager
    def spare(self):
        """A turn for background work, taken only when nobody works or waits."""
        with self._cond:
            while self._busy or self._waiting:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


@dataclass
class Job:
    id: str
    total: int = 0
    done: int = 0
    state: str = "running"  # running, finished, failed, cancelled
    error: str | None = None
    result: dict | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Session:
    id: str
    volume: str  # digest
    axis: int | None  # None: a 2D image
    affine: np.ndarray | None
    preset: str
    orientation: str
    value_range: tuple[float, float] | None = None
    last_used: float = field(default_factory=time.monotonic)
    predictor: object = None  # 2D images: prepared once
    slices: object = None  # volumes: VolumeSlices for embedding ahead
    pending: deque = field(default_factory=deque)  # slices to embed ahead
    jobs: dict[str, Job] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return any(j.state == "running" for j in self.jobs.values())


class NotFound(SamMed2DError):
    """An unknown or expired session, job or volume (HTTP 404)."""


class Conflict(SamMed2DError):
    """A request that does not fit the state of its job (HTTP 409)."""


class State:
    """Everything the server holds, behind one lock (model work runs outside it)."""

    def __init__(self, config: ServerConfig, model=None) -> None:
        from .cache import EmbeddingCache
        from .models import load_model

        self.config = config
        self.model = model or load_model(
            config.model,
            device=config.device,
            precision=config.precision,
            preprocessing=config.preprocessing,
        )
        # Request threads share Python's lock with the model's: graphs run without it.
        from . import graphs

        graphs.enable(self.model)
        self.queue = DeviceQueue()
        # Half the memory bound for embeddings, half for volumes.
        self.cache = EmbeddingCache(max_bytes=config.max_memory // 2, folder=config.cache_dir)
        self.volume_budget = config.max_memory - self.cache.max_bytes
        self.volumes: OrderedDict[str, np.ndarray] = OrderedDict()
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.RLock()
        self.wake = threading.Event()  # replaced after each job change (see _notify)
        self.embed_wake = threading.Event()
        self.closing = False
        self.clicks = self.runs = 0  # requests served, for operators and tests
        self.embedder = threading.Thread(target=self._embed_ahead, daemon=True)
        self.embedder.start()

    # ----- bookkeeping -----------------------------------------------------------------

    def memory(self) -> int:
        with self.lock:
            return self._volume_bytes() + self.cache.nbytes

    def _volume_bytes(self) -> int:
        return sum(v.nbytes for v in self.volumes.values())

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last_used > self.config.session_ttl and not s.running:
                self._drop(sid)

    def _drop(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        for job in session.jobs.values():
            job.cancel.set()
        if not any(s.volume == session.volume for s in self.sessions.values()):
            self.volumes.pop(session.volume, None)

    def _make_room(self, need: int, sessions: int = 0) -> None:
        """Drop unused volumes, then idle sessions, oldest first, until `need` bytes more and
        `sessions` more sessions fit."""
        used = {s.volume for s in self.sessions.values()}
        for digest in [d for d in self.volumes if d not in used]:
            if self._volume_bytes() + need <= self.volume_budget:
                break
            self.volumes.pop(digest)
        for sid in list(self.sessions):
            fits = self._volume_bytes() + need <= self.volume_budget
            if fits and len(self.sessions) + sessions <= self.config.max_sessions:
                break
            if not self.sessions[sid].running:
                self._drop(sid)

    def session(self, sid: str) -> Session:
        with self.lock:
            self._expire()
            session = self.sessions.get(sid)
            if session is None:
                raise NotFound(f"session {sid[:8]}…: unknown or expired")
            session.last_used = time.monotonic()
            self.sessions.move_to_end(sid)
            self.volumes.move_to_end(session.volume)
            return session

    # ----- volumes and sessions ---------------------------------------------------------

    def _volume_of(self, session: Session) -> np.ndarray:
        """The session's volume; NotFound (the client reopens) if it was dropped meanwhile."""
        with self.lock:
            volume = self.volumes.get(session.volume)
        if volume is None:
            raise NotFound(f"session {session.id[:8]}…: unknown or expired (volume dropped)")
        return volume

    def has_volume(self, digest: str) -> bool:
        with self.lock:
            return digest in self.volumes

    def add_volume(self, digest: str, body: bytes) -> tuple[int, ...]:
        array = unpack_array(body, self.config.max_upload, "volume")
        if array.ndim not in (2, 3):
            raise PromptError(f"volume of shape {array.shape}: expected 2 or 3 dimensions")
        if array_digest(array) != digest:
            raise PromptError("volume: its content does not match the digest it was sent under")
        if array.nbytes > self.volume_budget:
            raise TooLarge(
                f"volume of {array.nbytes / 2**20:.0f} MiB: more than this server holds "
                f"({self.volume_budget / 2**20:.0f} MiB)"
            )
        with self.lock:
            if digest not in self.volumes:
                self._make_room(array.nbytes)
                self.volumes[digest] = array
        return array.shape

    def open(self, digest, axis, affine, preset, orientation, value_range) -> Session:
        with self.lock:
            self._expire()
            volume = self.volumes.get(digest)
            if volume is None:
                raise NotFound(f"volume {digest[:12]}…: not uploaded (or dropped)")
            if not is_window(preset):
                raise PromptError(f"window {preset!r}: expected {WINDOW_WORDS}")
            if orientation not in ("radiological", "array"):
                raise PromptError(f"orientation {orientation!r}: radiological or array")
            if axis is not None and (volume.ndim != 3 or not -3 <= axis < 3):
                raise PromptError(f"axis {axis} does not fit a volume of shape {volume.shape}")
            if affine is not None:
                affine = np.asarray(affine, np.float64)
                if affine.shape != (4, 4) or not np.isfinite(affine).all():
                    raise PromptError("affine: expected a finite 4 x 4 matrix")
        # The window, once per session: outside the lock and the device queue (it reads the
        # whole volume). A 2D image is windowed by its Predictor.
        if value_range is not None:
            value_range = (float(value_range[0]), float(value_range[1]))
        elif axis is not None:
            from .intensity import intensity_range

            value_range = intensity_range(volume, preset)
        with self.lock:
            if digest not in self.volumes:
                raise NotFound(f"volume {digest[:12]}…: not uploaded (or dropped)")
            self._make_room(0, sessions=1)
            sid = secrets.token_urlsafe(16)
            session = Session(sid, digest, axis, affine, preset, orientation, value_range)
            self.sessions[sid] = session
            return session

    def close(self, sid: str) -> None:
        with self.lock:
            if sid not in self.sessions:
                raise NotFound(f"session {sid[:8]}…: unknown or expired")
            self._drop(sid)

    # ----- model work --------------------------------------------------------------------

    @staticmethod
    def _where(session: Session) -> dict:
        """The slicing and window a session's model calls share, as keyword arguments."""
        return {
            "axis": session.axis,
            "affine": session.affine,
            "preset": session.preset,
            "value_range": session.value_range,
            "orientation": session.orientation,
        }

    def _volume_slices(self, session: Session, volume: np.ndarray):
        from .propagate import volume_slices

        if session.slices is None:
            session.slices = volume_slices(
                self.model, volume, cache=self.cache, **self._where(session)
            )
        return session.slices

    def segment(self, sid: str, body: dict) -> dict:
        session = self.session(sid)
        volume = self._volume_of(session)
        prompt = prompt_from_json(body.get("prompt") or {}, self.config.max_upload)
        with self.queue.turn():
            self.clicks += 1
            if session.axis is None:
                return self._predict_2d(session, volume, prompt, body)
            from .propagate import segment_slice

            index = body.get("index")
            if not isinstance(index, int):
                raise PromptError("segment: a volume needs an integer slice index")
            mask, score = segment_slice(
                volume, index, prompt, self.model, cache=self.cache, **self._where(session)
            )
        return {"masks": encode_array(mask[None]), "scores": [float(score)]}

    def _predict_2d(self, session: Session, image: np.ndarray, prompt, body: dict) -> dict:
        from .predictor import Predictor

        if session.predictor is None:
            predictor = Predictor(self.model, cache=self.cache)
            predictor.set_image(image, preset=session.preset)
            session.predictor = predictor
        mask_input = body.get("mask_input")
        if mask_input is not None:
            from .wire import decode_array

            mask_input = decode_array(mask_input, self.config.max_upload, "mask_input")
        masks, scores, low_res = session.predictor.predict(
            prompt.points,
            prompt.labels,
            prompt.box,
            mask_input,
            multimask_output=bool(body.get("multimask", False)),
        )
        out = {"masks": encode_array(masks), "scores": [float(s) for s in scores]}
        if body.get("logits"):
            out["logits"] = encode_array(np.asarray(low_res, np.float32))
        return out

    def start_propagation(self, sid: str, body: dict) -> Job:
        from .prompt_files import settings_from_json

        session = self.session(sid)
        if session.axis is None:
            raise PromptError("propagate: the session holds a 2D image, not a volume")
        volume = self._volume_of(session)
        axis, objects = objects_from_wire(body.get("objects") or {}, self.config.max_upload)
        if axis != session.axis:
            raise PromptError(f"propagate: objects along axis {axis}, session along {session.axis}")
        settings = settings_from_json(body.get("settings"), "propagate")
        job = Job(secrets.token_urlsafe(12))
        with self.lock:
            session.jobs[job.id] = job
        thread = threading.Thread(
            target=self._propagate, args=(session, volume, objects, settings, job), daemon=True
        )
        thread.start()
        return job

    def _propagate(self, session, volume, objects, settings, job: Job) -> None:
        from .propagate import propagate

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            with self.lock:
                self._notify()
            self.queue.step_aside()

        try:
            with self.queue.turn():
                self.runs += 1
                result = propagate(
                    volume,
                    objects,
                    self.model,
                    settings=settings,
                    cache=self.cache,
                    progress=progress,
                    should_stop=job.cancel.is_set,
                    **self._where(session),
                )
            job.result = result_to_json(result)
            job.state = "cancelled" if result.cancelled else "finished"
        except Cancelled:
            job.state = "cancelled"
        except SamMed2DError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug: the client gets one line, the log the traceback
            log.error("propagation failed:\n%s", traceback.format_exc())
            job.state, job.error = "failed", f"internal error ({type(exc).__name__}: {exc})"
        with self.lock:
            self._notify()

    def _notify(self) -> None:
        self.wake.set()
        self.wake = threading.Event()

    def job(self, sid: str, jid: str) -> Job:
        session = self.session(sid)
        job = session.jobs.get(jid)
        if job is None:
            raise NotFound(f"job {jid[:8]}…: unknown")
        return job

    def events(self, sid: str, jid: str):
        """Progress of a job as JSON lines, until it ends; a line every 10 s at least."""
        job = self.job(sid, jid)
        last = None
        while True:
            with self.lock:
                wake = self.wake
            now = (job.state, job.done, job.total, job.error)
            if now != last:
                last = now
                line = {"state": now[0], "done": now[1], "total": now[2]}
                if now[3]:
                    line["error"] = now[3]
                yield json.dumps(line) + "\n"
                if now[0] != "running":  # as sent: the state may have moved on since
                    return
            elif not wake.wait(10.0):
                yield json.dumps({"state": job.state, "done": job.done, "total": job.total}) + "\n"
            if self.closing:
                return

    def take_result(self, sid: str, jid: str) -> dict:
        job = self.job(sid, jid)
        if job.state == "running":
            raise Conflict(f"job {jid[:8]}…: still running")
        if job.state == "failed":
            raise Conflict(f"job {jid[:8]}…: failed ({job.error})")
        if job.result is None:
            raise Conflict(f"job {jid[:8]}…: cancelled before any result")
        with self.lock:
            self.sessions[sid].jobs.pop(jid, None)
        return job.result

    def embed_ahead(self, sid: str, indices: list[int]) -> int:
        session = self.session(sid)
        if session.axis is None:
            return 0
        n = self._volume_of(session).shape[session.axis]
        wanted = [int(i) for i in indices if isinstance(i, int) and 0 <= i < n]
        with self.lock:
            session.pending = deque(wanted)  # the newest list replaces the old one
        self.embed_wake.set()
        return len(wanted)

    def _embed_ahead(self) -> None:
        from .predictor import embed_slices

        while not self.closing:
            task = None
            with self.lock:
                for session in reversed(self.sessions.values()):  # most recent first
                    if session.pending:
                        task = session, session.pending.popleft()
                        break
            if task is None:
                self.embed_wake.wait(1.0)
                self.embed_wake.clear()
                continue
            session, index = task
            try:
                with self.queue.spare():
                    volume = self.volumes.get(session.volume)
                    if volume is None or session.id not in self.sessions:
                        continue
                    slices = self._volume_slices(session, volume)
                    embed_slices(self.model, [slices.rgb(index)], 1, self.cache)
            except Exception:
                log.warning("embedding ahead failed:\n%s", traceback.format_exc())

    def info(self) -> dict:
        import torch

        from .prompt_files import model_record

        name, sha = model_record(self.model)
        spec = self.model.spec
        with self.lock:
            sessions = len(self.sessions)
            running = sum(s.running for s in self.sessions.values())
        return {
            "sammed2d": __version__,
            "torch": torch.__version__,
            "model": {
                "name": name,
                "sha256": sha,
                "family": spec.name,
                "boxes_only": bool(spec.boxes_only),
                "input_size": int(spec.input_size),
            },
            "device": str(self.model.device),
            "precision": getattr(self.model, "precision", "fp32"),
            "sessions": sessions,
            "jobs_running": running,
            "memory_bytes": self.memory(),
            "limits": {
                "max_sessions": self.config.max_sessions,
                "max_memory_bytes": self.config.max_memory,
                "max_upload_bytes": self.config.max_upload,
                "session_ttl_s": self.config.session_ttl,
            },
        }


def _bearer(request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key", "")


def create_app(config: ServerConfig, model=None):
    """The FastAPI application; `model` (already loaded) overrides `config.model`."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, Field

    state = State(config, model)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.closing = True
        state.embed_wake.set()
        with state.lock:
            state._notify()

    def authorised(request: Request) -> None:
        if config.api_key is None:
            return
        given = _bearer(request).encode()
        if not hmac.compare_digest(given, config.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key")

    app = FastAPI(
        lifespan=lifespan,
        title="sammed2d",
        version=__version__,
        description="Promptable segmentation of medical volumes (SAM-Med2D family) for thin "
        "clients: upload a volume once, then segment slices and propagate objects.",
    )
    app.state.sammed2d = state

    @app.exception_handler(SamMed2DError)
    async def engine_error(request, exc: SamMed2DError):
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
        if isinstance(exc, TooLarge):
            status = 413
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            {"detail": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422
        )

    class SessionBody(BaseModel):
        volume: str = Field(description="SHA-256 of the uploaded volume (see PUT /volumes)")
        axis: int | None = Field(2, description="slice axis; null for a 2D image")
        affine: list[list[float]] | None = Field(None, description="voxel -> RAS mm, 4 x 4")
        preset: str = Field("auto", description="intensity window preset")
        orientation: str = Field("radiological", description="radiological or array")
        value_range: tuple[float, float] | None = Field(None, description="window override")

    class SegmentBody(BaseModel):
        index: int | None = Field(None, description="slice index (volumes)")
        prompt: dict = Field(description="box [x0,y0,x1,y1], points [[x,y]], labels, mask")
        mask_input: str | None = Field(None, description="2D: low-res logits (.npy, base64)")
        multimask: bool = False
        logits: bool = Field(False, description="2D: also return low-res logits")

    class PropagateBody(BaseModel):
        objects: dict = Field(description="{axis, objects} as in a prompts file")
        settings: dict | None = Field(None, description="PropagationSettings fields")

    class EmbedBody(BaseModel):
        indices: list[int] = Field(description="slices to embed, most wanted first")

    guarded = [Depends(authorised)]

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/info", dependencies=guarded)
    def info() -> dict:
        return state.info()

    @app.head("/volumes/{digest}", dependencies=guarded)
    def volume_known(digest: str):
        return Response(status_code=200 if state.has_volume(digest) else 404)

    @app.put("/volumes/{digest}", dependencies=guarded)
    async def upload(digest: str, request: Request) -> dict:
        declared = int(request.headers.get("content-length") or 0)
        if declared > config.max_upload:
            raise TooLarge(f"upload of {declared / 2**20:.0f} MiB: over the server's limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_upload:
                raise TooLarge(f"upload over the limit of {config.max_upload / 2**20:.0f} MiB")
            chunks.append(chunk)
        shape = await run_in_threadpool(state.add_volume, digest, b"".join(chunks))
        return {"volume": digest, "shape": list(shape)}

    @app.post("/sessions", dependencies=guarded)
    def open_session(body: SessionBody) -> dict:
        s = state.open(
            body.volume, body.axis, body.affine, body.preset, body.orientation, body.value_range
        )
        return {"session": s.id, "ttl_s": config.session_ttl}

    @app.delete("/sessions/{sid}", dependencies=guarded)
    def close_session(sid: str) -> dict:
        state.close(sid)
        return {"closed": True}

    @app.post("/sessions/{sid}/segment", dependencies=guarded)
    def segment(sid: str, body: SegmentBody) -> dict:
        return state.segment(sid, body.model_dump())

    @app.post("/sessions/{sid}/embed", dependencies=guarded)
    def embed(sid: str, body: EmbedBody) -> dict:
        return {"queued": state.embed_ahead(sid, body.indices)}

    @app.post("/sessions/{sid}/propagate", dependencies=guarded)
    def propagate(sid: str, body: PropagateBody) -> dict:
        job = state.start_propagation(sid, body.model_dump())
        return {"job": job.id}

    @app.get("/sessions/{sid}/jobs/{jid}/events", dependencies=guarded)
    def events(sid: str, jid: str):
        stream = state.events(sid, jid)
        return StreamingResponse(stream, media_type="application/x-ndjson")

    @app.get("/sessions/{sid}/jobs/{jid}/result", dependencies=guarded)
    def result(sid: str, jid: str) -> dict:
        return state.take_result(sid, jid)

    @app.delete("/sessions/{sid}/jobs/{jid}", dependencies=guarded)
    def cancel(sid: str, jid: str) -> dict:
        state.job(sid, jid).cancel.set()
        return {"cancelling": True}

    return app


def check_exposure(host: str, api_key: str | None) -> None:
    if host not in LOOPBACK and not api_key:
        raise SamMed2DError(
            f"serve: listening on {host} needs an API key (--api-key or SAMMED2D_API_KEY); "
            "without one, only loopback (127.0.0.1) is allowed"
        )


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    check_exposure(host, config.api_key)
    app = create_app(config)
    info = app.state.sammed2d.info()
    print(
        f"sammed2d serve: {info['model']['name']} on {info['device']} ({info['precision']}), "
        f"http://{host}:{port}  (API description at /docs)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
