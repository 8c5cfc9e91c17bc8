"""Status page fixtures: a real daemon with the page on, and plain HTTP/SSE clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoomdProcess, free_port


class PageDaemon(LoomdProcess):
    """A daemon whose metrics port serves the status page; `base` is its URL."""

    def __init__(self, root: Path, page: str = "local", bind: str = "127.0.0.1",
                 clients: int = 2, extra: str = "", llm: bool = True) -> None:  # fmt: skip
        self.port = free_port()
        self.bind = bind
        toml = (
            f'[metrics]\nbind = "{bind}"\nport = {self.port}\npage = "{page}"\n'
            f"page_clients = {clients}\n"
            # The router with no model still decides (route "deny"): /api/routes has data.
            f"[llm]\nenabled = {str(llm).lower()}\n[voice]\nenabled = false\n" + extra
        )
        super().__init__(root, toml)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def get(
    port: int, path: str, *, host: str = "127.0.0.1", method: str = "GET",
    headers: dict[str, str] | None = None, timeout: float = 10.0, body: str | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One real HTTP request: (status, headers by lower-case name, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, headers, body = get(port, path)
    assert status == 200, (path, status, body)
    assert headers["content-type"] == "application/json"
    return json.loads(body)


class SseClient:
    """A raw-socket SSE client: it reads only when asked, so a test can make it slow."""

    def __init__(self, port: int, pattern: str | None = None, *, host: str = "127.0.0.1",
                 rcvbuf: int | None = None, headers: dict[str, str] | None = None,
                 ) -> None:  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10.0)
        self.sock.connect((host, port))
        query = "" if pattern is None else "?pattern=" + pattern.replace("#", "%23")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            f"GET /api/events{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n".encode()
        )
        self.buf = b""  # the body (de-chunked) not yet taken
        self.raw = b""  # received bytes not yet de-chunked
        self.chunked = False
        self.status = 0
        self.head = b""

    def read_head(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        self.head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ", 2)[1])
        self.chunked = b"transfer-encoding: chunked" in self.head.lower()
        self.buf = b""
        self._take(rest)
        return self.status

    def _take(self, data: bytes) -> None:
        """Body bytes as received: de-chunked (HTTP/1.1 chunked transfer coding, what a
        stream of unknown length is sent with) into `buf`."""
        if not self.status or not self.chunked:
            self.buf += data
            return
        self.raw += data
        while b"\r\n" in self.raw:
            size_line, _, rest = self.raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", "a chunk must end with CRLF"
            self.buf += rest[:size]
            self.raw = rest[size + 2 :]

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the stream")
        self._take(chunk)

    def next_frame(self, timeout: float = 10.0) -> tuple[str, Any]:
        """The next SSE frame: ("bus" | "dropped", data) or ("comment", text)."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            self._fill(deadline)
        frame, _, self.buf = self.buf.partition(b"\n\n")
        lines = frame.decode().split("\n")
        if all(line.startswith(":") for line in lines if line) and lines[0].startswith(":"):
            return "comment", "\n".join(lines)
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" not in fields:
            return "comment", "\n".join(lines)  # e.g. "retry:" with the opening comment
        return fields["event"], json.loads(fields["data"])

    def wait_for(self, pred: Any, timeout: float = 10.0) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            kind, data = self.next_frame(max(0.01, deadline - time.monotonic()))
            if pred(kind, data):
                return kind, data

    def close(self) -> None:
        self.sock.close()


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (b"" for the last one)."""
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    data = await reader.readexactly(size + 2)
    assert data.endswith(b"\r\n"), "a chunk must end with CRLF"
    return data[:-2]


CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 1400
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing in CI: scripts/setup --dev installs them")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'profile'}")  # fresh every run
    # The given driver path: selenium never looks for, or downloads, a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_js(driver: Any, js: str, timeout: float = 20.0, what: str = "") -> Any:
    """Wait (with a deadline) until the script `return ...` gives a truthy value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(js), message=what or js
    )


def check_screenshot(driver: Any, shot: Path) -> None:
    """A real PNG of the window's size that is not blank (text, tables, plots)."""
    from PIL import Image, ImageStat

    assert driver.save_screenshot(str(shot))
    w, h, dpr = driver.execute_script(
        "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]"
    )
    with Image.open(shot) as img:
        assert img.format == "PNG"
        assert img.size == (round(w * dpr), round(h * dpr))
        assert w >= WIDTH * 0.9
        assert ImageStat.Stat(img.convert("L")).var[0] > 100  # not one colour
        assert len(img.convert("RGB").getcolors(1 << 20) or ()) > 32
    print(f"screenshot: {shot}")
    keep = os.environ.get("LOOMD_SCREENSHOT_DIR")  # for a human to look at; never committed
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


@pytest.fixture(scope="module")
def page_daemon() -> Iterator[PageDaemon]:
    root = Path(tempfile.mkdtemp(prefix="ldw-", dir="/tmp"))
    d = PageDaemon(root)
    try:
        d.start()
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[Any]:
    """`make_daemon(page=..., bind=...)`: a started daemon of its own for one test."""
    made: list[PageDaemon] = []

    def make(**kw: Any) -> PageDaemon:
        root = short_tmp / f"d{len(made)}"
        root.mkdir()
        d = PageDaemon(root, **kw)
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        d.close()
