"""Models fixtures: a real HTTP server on loopback (our own handler: Range requests, a
connection cut mid-file, a transfer held open until released, wrong bytes) serving real model
files from the test models (tests/testmodels.py), a catalogue written for it, and `loomctl
models` as a user runs it.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

_RANGE = re.compile(r"bytes=(\d+)-")
# The default set the shipped catalogue must list (what a board needs to hear, think, speak).
DEFAULTS = {
    "whisper-tiny.en",
    "piper-en_US-joe-medium",
    "openwakeword-features",
    "openwakeword-hey_jarvis",
    "openwakeword-alexa",
    "smollm2-135m-instruct",
}


def held(manifest: dict[str, object]) -> set[str]:
    """The ids of the catalogue models whose every file the test models hold (the default
    set, and what scripts/fetch-test-models fetches beyond it)."""
    from loomd.models.catalogue import catalogue

    return {m.id for m in catalogue() if all(f.path in manifest for f in m.files)}


@dataclass
class Served:
    """One URL path: its bytes and how to misbehave."""

    data: bytes
    cut_after: int | None = None  # first response: send this many body bytes, then drop
    hold_after: int | None = None  # first response: send this many, then wait for `release`
    ranges: bool = True  # honour Range (else always 200 with the whole body)
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    responses: int = 0


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    sent: int = 0  # body bytes written


class ModelServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.log: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes, **how: Any) -> str:
        self.files[path] = Served(data, **how)
        return self.base + path

    def requests(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        spec = self.files.get(h.path)
        rng = h.headers.get("Range")
        if spec is None:
            self.log.append(Request(h.path, rng, 404))
            h.send_error(404)
            return
        with self._lock:
            spec.responses += 1
            first = spec.responses == 1
        start = 0
        m = _RANGE.fullmatch(rng or "")
        status = 206 if (m and spec.ranges) else 200
        if status == 206 and m:
            start = int(m.group(1))
            if start >= len(spec.data):
                self.log.append(Request(h.path, rng, 416))
                h.send_error(416)
                return
        req = Request(h.path, rng, status)
        self.log.append(req)
        body = spec.data[start:]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(spec.data) - 1}/{len(spec.data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        limit = spec.cut_after if first else None
        hold = spec.hold_after if first else None
        n = min(x for x in (limit, hold, len(body)) if x is not None)
        try:
            h.wfile.write(body[:n])
            h.wfile.flush()
            req.sent = n
            if hold is not None:
                spec.holding.set()
                spec.release.wait(30)
            if n < len(body):  # cut: the client sees the connection end early
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        for spec in self.files.values():
            spec.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    s = ModelServer()
    yield s
    s.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(members: dict[str, bytes]) -> bytes:
    """A small wheel-like zip, built at test time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def file_toml(path: str, data: bytes, sources: list[dict[str, Any]], **extra: Any) -> str:
    lines = ["[[model.file]]", f'path = "{path}"', f"bytes = {len(data)}"]
    lines += [f'sha256 = "{sha256(data)}"']
    lines += [f"{k} = {_toml(v)}" for k, v in extra.items()]
    for src in sources:
        lines += ["[[model.file.source]]"] + [f"{k} = {_toml(v)}" for k, v in src.items()]
    return "\n".join(lines) + "\n"


def model_toml(mid: str, kind: str, files: list[str], **extra: Any) -> str:
    head = ["[[model]]", f'id = "{mid}"', f'kind = "{kind}"']
    head += [f"{k} = {_toml(v)}" for k, v in extra.items()]
    return "\n".join(head) + "\n" + "".join(files)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def loomctl_models(
    *args: str, catalogue: Path | None = None, models_dir: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`loomctl models ARGS` as a user runs it (no daemon involved)."""
    cmd = [sys.executable, "-m", "loomd.ctl", "models", *args]
    if catalogue is not None:
        cmd += ["--catalogue", str(catalogue)]
    if models_dir is not None:
        cmd += ["--models-dir", str(models_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
