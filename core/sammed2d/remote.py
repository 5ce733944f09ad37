"""A client of `sammed2d serve` with the local engine's calls; it needs neither torch nor
any package beyond numpy (HTTP is the standard library's).

    client = Client("http://gpu-box:8765", api_key="...")
    mask, score = client.segment_slice(volume, 40, SlicePrompt(box=...), affine=affine)
    result = client.propagate(volume, objects, affine=affine, progress=print)

Volumes are uploaded once per server (named by their content hash) and a session is
opened per volume, axis and window; both are re-created transparently when the server has
dropped them. Results equal the local engine's for the same model, device and settings.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

from .errors import Cancelled, SamMed2DError
from .objects import ObjectPrompts, PropagationResult, PropagationSettings, SlicePrompt
from .wire import (
    array_digest,
    decode_array,
    encode_array,
    objects_to_wire,
    pack_array,
    prompt_to_json,
    result_from_json,
    settings_to_json,
)

# Arrays coming back (labels, masks) are trusted up to this size once decompressed.
MAX_REPLY = 8 << 30


class RemoteError(SamMed2DError):
    """The server refused a request or could not be reached; the message says which."""


class Client:
    """The engine's calls, run by a `sammed2d serve` at `url` (http:// or https://)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"server {url!r}: expected http://host:port or https://host:port")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SAMMED2D_API_KEY")
        self.timeout = timeout
        self._local = threading.local()  # one keep-alive connection per thread
        self._lock = threading.Lock()
        self._digests: dict[int, tuple[weakref.ref, str]] = {}
        self._sessions: dict[tuple, str] = {}

    # ----- HTTP ----------------------------------------------------------------------------

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            kind = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            conn = kind(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _headers(self, content_type: str | None) -> dict:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _send(self, method: str, path: str, body=None, content_type=None, stream=False):
        """The response (status checked); retried once on a stale keep-alive connection."""
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(method, self._prefix + path, body, self._headers(content_type))
                response = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 1 or isinstance(exc, TimeoutError):
                    raise RemoteError(f"server {self.url}: unreachable ({_reason(exc)})") from None
        if response.status >= 400:
            text = response.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text).get("detail", text)
            except (ValueError, AttributeError):
                detail = text
            if response.status == 401:
                detail = "missing or wrong API key (set --api-key or SAMMED2D_API_KEY)"
            raise RemoteError(f"server {self.url}: {detail} (HTTP {response.status})")
        if stream:
            return response
        data = response.read()
        return response.status, data

    def _json(self, method: str, path: str, payload=None) -> dict:
        body = None if payload is None else json.dumps(payload).encode()
        _, data = self._send(method, path, body, "application/json" if body else None)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise RemoteError(f"server {self.url}: answered with something not JSON") from None

    # ----- sessions --------------------------------------------------------------------------

    def info(self) -> dict:
        """The server's model, device, precision, version and limits."""
        return self._json("GET", "/info")

    def digest(self, array: np.ndarray) -> str:
        """Content hash of an array, remembered per array object (napari layers reuse theirs)."""
        key = id(array)
        with self._lock:
            known = self._digests.get(key)
            if known is not None and known[0]() is array:
                return known[1]
        value = array_digest(array)
        try:
            ref = weakref.ref(array)
        except TypeError:
            return value
        with self._lock:
            self._digests = {k: v for k, v in self._digests.items() if v[0]() is not None}
            self._digests[key] = (ref, value)
        return value

    def upload(self, array: np.ndarray) -> str:
        """Send `array` unless the server already holds it; returns its digest."""
        digest = self.digest(array)
        try:
            self._send("HEAD", f"/volumes/{digest}")
            return digest
        except RemoteError as exc:
            if "HTTP 404" not in str(exc):
                raise
        self._send("PUT", f"/volumes/{digest}", pack_array(array), "application/octet-stream")
        return digest

    def session(self, array, axis, affine=None, preset="auto", value_range=None,
                orientation="radiological") -> str:  # fmt: skip
        """A session on `array` with this geometry and window, opened once and reused."""
        digest = self.digest(array)
        affine_key = None if affine is None else np.asarray(affine, np.float64).tobytes()
        range_key = None if value_range is None else tuple(float(v) for v in value_range)
        key = (digest, axis, affine_key, preset, range_key, orientation)
        with self._lock:
            sid = self._sessions.get(key)
        if sid is not None:
            return sid
        self.upload(array)
        payload = {
            "volume": digest,
            "axis": axis,
            "affine": None if affine is None else np.asarray(affine, float).tolist(),
            "preset": preset,
            "orientation": orientation,
            "value_range": None if range_key is None else list(range_key),
        }
        try:
            sid = self._json("POST", "/sessions", payload)["session"]
        except RemoteError as exc:
            if "HTTP 404" not in str(exc):  # dropped between HEAD and POST: send it again
                raise
            self._send("PUT", f"/volumes/{digest}", pack_array(array), "application/octet-stream")
            sid = self._json("POST", "/sessions", payload)["session"]
        with self._lock:
            self._sessions[key] = sid
        return sid

    def _in_session(self, key_args: tuple, call: Callable[[str], object]):
        """Run call(session id); when the server has dropped the session, open it again."""
        sid = self.session(*key_args)
        try:
            return call(sid)
        except RemoteError as exc:
            if "HTTP 404" not in str(exc) or "session" not in str(exc):
                raise
            with self._lock:
                self._sessions = {k: v for k, v in self._sessions.items() if v != sid}
            return call(self.session(*key_args))

    def close(self) -> None:
        """Close this client's sessions on the server (best effort) and its connections."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for sid in sessions:
            try:
                self._json("DELETE", f"/sessions/{sid}")
            except RemoteError:
                pass
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ----- the engine's calls ----------------------------------------------------------------

    def segment_slice(
        self,
        volume: np.ndarray,
        index: int,
        prompt: SlicePrompt,
        axis: int = 2,
        affine: np.ndarray | None = None,
        preset: str = "auto",
        value_range: tuple[float, float] | None = None,
        orientation: str = "radiological",
    ) -> tuple[np.ndarray, float]:
        """As `sammed2d.propagate.segment_slice`: (mask, predicted IoU)."""
        volume = np.asarray(volume)
        payload = {"index": int(index), "prompt": prompt_to_json(prompt)}

        def call(sid):
            return self._json("POST", f"/sessions/{sid}/segment", payload)

        out = self._in_session((volume, axis, affine, preset, value_range, orientation), call)
        return decode_array(out["masks"], MAX_REPLY, "mask")[0], float(out["scores"][0])

    def predict(
        self,
        image: np.ndarray,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = False,
        preset: str = "auto",
    ):
        """As `Predictor.set_image(image)` then `.predict(...)`: (masks, scores, low-res logits)."""
        image = np.asarray(image)
        prompt = SlicePrompt(box=box, points=point_coords, labels=point_labels)
        payload = {
            "prompt": prompt_to_json(prompt),
            "multimask": bool(multimask_output),
            "logits": True,
            "mask_input": None if mask_input is None else encode_array(np.asarray(mask_input)),
        }

        def call(sid):
            return self._json("POST", f"/sessions/{sid}/segment", payload)

        out = self._in_session((image, None, None, preset, None, "array"), call)
        masks = decode_array(out["masks"], MAX_REPLY, "masks").astype(bool)
        logits = decode_array(out["logits"], MAX_REPLY, "logits")
        return masks, np.asarray(out["scores"], np.float32), logits

    def embed_ahead(
        self,
        volume: np.ndarray,
        indices: list[int],
        axis: int = 2,
        affine: np.ndarray | None = None,
        preset: str = "auto",
        value_range: tuple[float, float] | None = None,
        orientation: str = "radiological",
    ) -> int:
        """Ask the server to embed these slices while it is idle (most wanted first)."""
        payload = {"indices": [int(i) for i in indices]}

        def call(sid):
            return self._json("POST", f"/sessions/{sid}/embed", payload)["queued"]

        return self._in_session((volume, axis, affine, preset, value_range, orientation), call)

    def propagate(
        self,
        volume: np.ndarray,
        objects: list[ObjectPrompts],
        axis: int = 2,
        affine: np.ndarray | None = None,
        preset: str = "auto",
        value_range: tuple[float, float] | None = None,
        orientation: str = "radiological",
        settings: PropagationSettings | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> PropagationResult:
        """As `sammed2d.propagate.propagate`, run on the server with progress streamed back.

        `should_stop()` returning True cancels the server's run; the result then holds the
        slices finished before, as locally. A server that stops answering raises
        RemoteError (nothing partial is returned)."""
        volume = np.asarray(volume)
        payload = {
            "objects": objects_to_wire(axis, objects),
            "settings": settings_to_json(settings),
        }

        def start(sid):
            return sid, self._json("POST", f"/sessions/{sid}/propagate", payload)["job"]

        key = (volume, axis, affine, preset, value_range, orientation)
        sid, job = self._in_session(key, start)
        base = f"/sessions/{sid}/jobs/{job}"
        final = self._follow(base, progress, should_stop)
        if final["state"] == "failed":
            raise RemoteError(f"server {self.url}: {final.get('error', 'propagation failed')}")
        try:
            return result_from_json(self._json("GET", f"{base}/result"), MAX_REPLY)
        except RemoteError as exc:
            if final["state"] == "cancelled" and "HTTP 409" in str(exc):
                raise Cancelled("propagation cancelled before any result") from None
            raise

    def _follow(self, base: str, progress, should_stop) -> dict:
        """Read a job's progress lines until it ends; cancel it when asked."""
        response = self._send("GET", f"{base}/events", stream=True)
        cancelling = False
        line = None
        try:
            while True:
                raw = response.readline()
                if not raw:
                    break
                line = json.loads(raw)
                if progress is not None and line.get("total"):
                    progress(int(line["done"]), int(line["total"]))
                if line["state"] != "running":
                    return line
                if not cancelling and should_stop is not None and should_stop():
                    cancelling = True
                    threading.Thread(target=self._cancel, args=(base,), daemon=True).start()
        except (ConnectionError, http.client.HTTPException, OSError, ValueError) as exc:
            raise RemoteError(
                f"server {self.url}: stopped answering during propagation ({_reason(exc)})"
            ) from None
        finally:
            # The events connection is spent: the next request on this thread opens another.
            self._connection().close()
            self._local.conn = None
        raise RemoteError(f"server {self.url}: stopped answering during propagation")

    def _cancel(self, base: str) -> None:
        try:
            self._json("DELETE", base)
        except RemoteError:
            pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
