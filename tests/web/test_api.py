"""The status page over real HTTP against a real daemon: every endpoint, the live tail,
its bounds, and who may see it."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from loomd.host import Host
from loomd.sdk import Client
from loomd.settings import load_config
from loomd.web.page import allowed
from tests.conftest import free_port, loomctl, wait_until
from tests.web.conftest import PageDaemon, SseClient, get, get_json, read_chunk

STATIC = Path(__file__).parents[2] / "loomd" / "web" / "static"


def test_page_and_static_files(page_daemon: PageDaemon) -> None:
    status, headers, body = get(page_daemon.port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="/static/app.js"' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        status, headers, body = get(page_daemon.port, path)
        assert status == 200 and headers["content-type"].startswith(kind) and body
    # Nothing from another origin: no CDN, no web fonts.
    for f in STATIC.iterdir():
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", f.read_bytes()), f.name
    status, headers, body = get(page_daemon.port, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert get(page_daemon.port, "/static/../metrics.py")[0] == 404
    assert get(page_daemon.port, "/api/nothing")[0] == 404
    assert get(page_daemon.port, "/api/status", method="POST")[0] == 405
    # /metrics is still the Prometheus scrape, with the page's own families.
    status, _, body = get(page_daemon.port, "/metrics")
    assert status == 200 and b"loomd_metrics_page_requests_total" in body


def test_the_script_never_inserts_markup() -> None:
    """Bus-derived text goes in with textContent: no HTML sinks in the page's script."""
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink
    assert "textContent" in js


def test_status_shape(page_daemon: PageDaemon) -> None:
    st = get_json(page_daemon.port, "/api/status")
    assert set(st) == {"daemon", "components", "agents", "bus", "page"}
    d = st["daemon"]
    assert d["device_id"] == "test-box" and d["healthy"] is True
    assert {"version", "pid", "uptime_s", "loop_lag_ms", "problems"} <= set(d)
    assert d["pid"] == page_daemon.pid()
    comps = {c["name"]: c for c in st["components"]}
    assert {"state", "bus", "metrics", "agents", "llm", "voice"} <= set(comps)
    for c in st["components"]:
        assert set(c) == {"name", "state", "healthy", "reason", "text"}
        assert isinstance(c["text"], list)
    assert comps["bus"]["state"] == "running" and comps["bus"]["healthy"] is True
    assert comps["voice"]["state"] == "disabled" and comps["voice"]["healthy"] is None
    assert st["agents"]["state"] == "running" and isinstance(st["agents"]["list"], list)
    assert st["page"] == {"mode": "local", "sse_clients": 0, "sse_max_clients": 2}
    assert {"events_in", "events_out", "dropped"} == set(st["bus"])


def test_history_samples_once_a_second(page_daemon: PageDaemon) -> None:
    def published() -> Any:
        h = get_json(page_daemon.port, "/api/history")
        col = h["fields"].index("events_in")
        return h if any(s[col] > 0 for s in h["samples"]) else None

    h = get_json(page_daemon.port, "/api/history")
    assert h["fields"] == ["t", "events_in", "events_out", "drops", "lag_ms"]
    assert h["interval_s"] == 1.0 and h["keep"] == 600
    wait_until(lambda: get_json(page_daemon.port, "/api/history")["samples"], what="a sample")
    assert loomctl(page_daemon, "pub", "demo.rate", '{"n": 1}').returncode == 0
    h = wait_until(published, timeout=10, what="a sample with events in it")
    for s in h["samples"]:
        assert len(s) == 5 and all(isinstance(v, int | float) and v >= 0 for v in s)
    times = [s[0] for s in h["samples"]]
    assert times == sorted(times)
    assert all(0.5 < b - a < 3.0 for a, b in itertools.pairwise(times))


def test_voice_disabled_says_so(page_daemon: PageDaemon) -> None:
    v = get_json(page_daemon.port, "/api/voice")
    assert v["state"] == "disabled" and v["turns"] == []
    assert [s[0] for s in v["stages"]][:3] == ["vad_end", "wake_check", "stt_start"]


def test_routes_show_decisions_with_reasons(page_daemon: PageDaemon) -> None:
    r = loomctl(page_daemon, "ask", "what time is it?", timeout=30)
    decision = re.search(r"decision ([0-9a-f]+)", r.stdout + r.stderr)
    assert decision, r.stdout + r.stderr
    routes = get_json(page_daemon.port, "/api/routes")
    assert routes["state"] == "running"
    newest = routes["decisions"][0]
    assert newest["id"] == decision.group(1)
    assert newest["route"] == "deny" and newest["rule"] == "no-route"
    assert "no local model" in newest["reason"]
    assert {"at", "agent", "est_latency_ms", "confidence", "policy", "facts"} <= set(newest)
    # The same record as `loomctl route recent` reads.
    recent = loomctl(page_daemon, "route", "recent", "-n", "1")
    assert decision.group(1)[:8] in recent.stdout


def test_sse_delivers_a_published_event(page_daemon: PageDaemon) -> None:
    sse = SseClient(page_daemon.port, "demo.#")
    try:
        assert sse.read_head() == 200
        assert b"text/event-stream" in sse.head
        payload = {"html": "<img src=x onerror=alert(1)>", "big": "x" * 5000, "raw": [1, 2, 3]}
        wait_until(
            lambda: get_json(page_daemon.port, "/api/status")["page"]["sse_clients"] == 1,
            what="the client to be counted",
        )
        assert loomctl(page_daemon, "pub", "demo.sse", json.dumps(payload)).returncode == 0
        assert loomctl(page_daemon, "pub", "other.topic", "{}").returncode == 0
        assert loomctl(page_daemon, "pub", "demo.end", "{}").returncode == 0
        _, ev = sse.wait_for(lambda k, d: k == "bus")
        assert ev["topic"] == "demo.sse" and ev["sender"] == "loomctl"
        # JSON, not markup; long strings cut, and saying so.
        assert ev["payload"]["html"] == "<img src=x onerror=alert(1)>"
        assert len(ev["payload"]["big"]) < 300 and "+4800 chars" in ev["payload"]["big"]
        _, ev = sse.wait_for(lambda k, d: k == "bus")
        assert ev["topic"] == "demo.end"  # other.topic did not match the pattern
    finally:
        sse.close()
    # A client that goes is unsubscribed: the count and its bus subscription are gone.
    wait_until(
        lambda: get_json(page_daemon.port, "/api/status")["page"]["sse_clients"] == 0,
        what="the client to be dropped",
    )

    def metrics_subs() -> list[Any]:
        st = json.loads(loomctl(page_daemon, "status", "--json").stdout)
        subs = st["components"]["bus"]["status"]["subscriptions"]
        return [s for s in subs if s["owner"] == "metrics"]

    wait_until(lambda: not metrics_subs(), what="the live tail's subscription to close")


def test_bad_pattern_is_a_clear_400(page_daemon: PageDaemon) -> None:
    status, _, body = get(page_daemon.port, "/api/events?pattern=a..b")
    assert status == 400 and b"empty segment" in body
    _, _, metrics = get(page_daemon.port, "/metrics")
    assert b"loomd_metrics_page_sse_clients 0" in metrics


def test_the_client_cap(page_daemon: PageDaemon) -> None:
    first, second = SseClient(page_daemon.port), SseClient(page_daemon.port)
    try:
        assert first.read_head() == 200 and second.read_head() == 200
        third = SseClient(page_daemon.port)
        assert third.read_head() == 503
        assert b"Retry-After" in third.head and b"page_clients" in third.buf + third.sock.recv(4096)
        third.close()
        first.close()
        wait_until(
            lambda: get_json(page_daemon.port, "/api/status")["page"]["sse_clients"] == 1,
            what="the closed client to free its place",
        )
        fourth = SseClient(page_daemon.port)
        assert fourth.read_head() == 200
        fourth.close()
    finally:
        first.close()
        second.close()
    _, _, metrics = get(page_daemon.port, "/metrics")
    assert re.search(rb"loomd_metrics_page_sse_refused_total [1-9]", metrics)


def test_a_slow_client_drops_and_is_told(page_daemon: PageDaemon) -> None:
    """A client that stops reading loses events (counted, then told), and neither the
    daemon nor a second client waits for it."""
    # The daemon is the module's: the last test's clients free their places first.
    wait_until(
        lambda: get_json(page_daemon.port, "/api/status")["page"]["sse_clients"] == 0,
        what="earlier live-tail clients to be gone",
    )
    slow = SseClient(page_daemon.port, "flood.#", rcvbuf=4096)
    fast = SseClient(page_daemon.port, "marker.#")
    try:
        assert slow.read_head() == 200 and fast.read_head() == 200
        wait_until(
            lambda: get_json(page_daemon.port, "/api/status")["page"]["sse_clients"] == 2,
            what="both clients",
        )
        n = 6000
        blob = {f"k{i}": "y" * 180 for i in range(10)}  # ~2 kB per frame on the wire

        async def flood() -> None:
            async with Client(page_daemon.endpoint, name="flooder") as bus:
                for i in range(n):
                    await bus.publish("flood.x", {"i": i, **blob}, qos="realtime")
                    if i % 500 == 0:
                        await asyncio.sleep(0)  # let the client's sender run
                # The end of the flood for the slow client: reliable, so the publisher
                # never drops it, and the newest, so no queue on the way drops it.
                await bus.publish("flood.end", {"n": n}, qos="reliable")
                await bus.publish("marker.done", {"n": n}, qos="reliable")

        began = time.monotonic()
        asyncio.run(asyncio.wait_for(flood(), 60))
        # The fast client sees the marker although the slow one has read nothing.
        _, ev = fast.wait_for(lambda k, d: k == "bus", timeout=15)
        assert ev["topic"] == "marker.done"
        status, _, _ = get(page_daemon.port, "/api/status", timeout=5)
        assert status == 200
        assert time.monotonic() - began < 60
        _, _, metrics = get(page_daemon.port, "/metrics")
        dropped = int(re.search(rb"loomd_metrics_page_sse_dropped_total (\d+)", metrics)[1])
        assert dropped > 0
        # Now it reads: what it gets is bounded, and it is told how many it missed.
        got, told = 0, 0
        while True:
            kind, data = slow.next_frame(timeout=10)
            if kind == "dropped":
                told += data["dropped"]
            elif kind == "bus":
                if data["topic"] == "flood.end":
                    break
                got += 1
        assert told > 0 and got + told <= n
        assert got < n  # the bound held: it did not get everything
    finally:
        slow.close()
        fast.close()


def _in_process(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / "loomd.toml"
    cfg.write_text(
        f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
        f'cache_dir = "{tmp_path}/cache"\n[metrics]\nport = {port}\n'
    )
    return cfg, port


def test_keepalive_comments(tmp_path: Path) -> None:
    """An idle stream sends comment lines (a dead peer is noticed, proxies keep it open).
    In process, with real components, to shorten the 15 s period."""
    cfg, port = _in_process(tmp_path)

    async def run() -> None:
        async with Host(load_config(cfg), names=["state", "bus", "metrics"]) as host:
            page = host.get("metrics").page  # type: ignore[union-attr]
            assert page is not None
            page.keepalive_s = 0.2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"transfer-encoding: chunked" in head.lower()  # HTTP/1.1, length unknown
            assert (await read_chunk(reader)).startswith(b": loomd live tail")
            assert await read_chunk(reader) == b": keepalive\n\n"
            assert await read_chunk(reader) == b": keepalive\n\n"
            assert len(page.streams) == 1
            writer.write_eof()  # the client goes: the server ends the stream and closes
            async with asyncio.timeout(5):
                while await reader.read(4096):
                    pass
                # uvicorn closes the socket as it sees the EOF; the stream's cleanup
                # (unsubscribe, give its place back) follows within a few loop turns
                while page.streams:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_client_that_takes_nothing_is_cut_off(tmp_path: Path) -> None:
    """A client whose socket stays full for the stall period loses its place (in process,
    with the 30 s period shortened), and the bus keeps flowing meanwhile."""
    cfg, port = _in_process(tmp_path)

    async def run() -> None:
        async with Host(load_config(cfg), names=["state", "bus", "metrics"]) as host:
            metrics = host.get("metrics")
            assert metrics is not None
            page = metrics.page  # type: ignore[attr-defined]
            page.stall_s = 0.5
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            assert len(page.streams) == 1
            bus = metrics.ctx.bus
            blob = "z" * 190
            async with asyncio.timeout(20):
                # Publish until the stream gives up on the client (its socket is full).
                while page.streams:  # each turn publishes: this is the load, not a poll
                    for _ in range(200):
                        await bus.publish("flood.x", {f"k{j}": blob for j in range(10)},
                                          qos="realtime")  # fmt: skip
                    await asyncio.sleep(0.01)
            assert page.sse_dropped > 0
            writer.close()

    asyncio.run(asyncio.wait_for(run(), 40))


# -- who may see it ---------------------------------------------------------------------------
def test_allowed_decision() -> None:
    assert allowed("local", "127.0.0.1", "127.0.0.1:9478")
    assert allowed("local", "127.5.6.7", "localhost:9478")
    assert allowed("local", "::1", "[::1]:9478")
    assert allowed("local", "::ffff:127.0.0.1", "localhost")
    assert allowed("local", "127.0.0.1", None)  # HTTP/1.0: no Host header
    assert not allowed("local", "192.168.1.20", "192.168.1.5:9478")
    assert not allowed("local", "::ffff:10.0.0.2", "localhost")
    assert not allowed("local", "fe80::1%eth0", "localhost")
    # DNS rebinding: a loopback peer asked for another site's name.
    assert not allowed("local", "127.0.0.1", "evil.example:9478")
    assert allowed("on", "192.168.1.20", "board.lan:9478")
    assert not allowed("off", "127.0.0.1", "localhost")


def _lan_address() -> str:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return str(a.address)
    pytest.skip("this machine has no non-loopback IPv4 address")


@pytest.mark.parametrize("page", ["local", "on"])
def test_exposure_with_a_real_peer(make_daemon: Any, page: str) -> None:
    """The metrics port bound to all addresses (so every client needs a token, loopback
    peers too: a local reverse proxy must not open it); a client on the machine's LAN
    address is a non-loopback peer. "local" refuses it the page (not /metrics); "on"
    serves it."""
    lan = _lan_address()
    d = make_daemon(page=page, bind="0.0.0.0")
    r = loomctl(d, "tokens", "create", "scraper", "--scope", "status")
    assert r.returncode == 0, r.stderr
    auth = {"Authorization": f"Bearer {r.stdout.strip()}"}
    deadline = time.monotonic() + 10  # the port opens once a token exists
    while get_or_none(d.port, "/metrics", host=lan, headers=auth) != 200:
        assert time.monotonic() < deadline, "the metrics port never opened"
        time.sleep(0.05)
    assert get(d.port, "/api/status", host=lan)[0] == 401
    status, _, body = get(d.port, "/api/status", host=lan, headers=auth)
    sse = SseClient(d.port, host=lan, headers=auth)
    try:
        sse_status = sse.read_head()
    finally:
        sse.close()
    if page == "local":
        assert status == 403 and b"localhost" in body
        assert sse_status == 403
        assert get(d.port, "/", host=lan, headers=auth)[0] == 403
        assert get(d.port, "/api/status", headers=auth)[0] == 200  # loopback still sees it
        _, _, metrics = get(d.port, "/metrics", host=lan, headers=auth)
        assert re.search(rb"loomd_metrics_page_refused_total [3-9]", metrics)
    else:
        assert status == 200 and json.loads(body)["page"]["mode"] == "on"
        assert sse_status == 200


def get_or_none(port: int, path: str, **kw: Any) -> int | None:
    try:
        return get(port, path, **kw)[0]
    except OSError:
        return None


def test_llm_disabled_says_so(make_daemon: Any) -> None:
    d = make_daemon(llm=False)
    routes = get_json(d.port, "/api/routes")
    assert routes == {"state": "disabled", "reason": "", "decisions": []}


def test_reload_turns_the_page_off_and_on(make_daemon: Any) -> None:
    d = make_daemon()
    assert get(d.port, "/api/status")[0] == 200
    assert d.notify is not None
    for page, expect in (("off", 404), ("local", 200)):
        d.config.write_text(d.config.read_text().replace(
            'page = "local"' if page == "off" else 'page = "off"', f'page = "{page}"'
        ))  # fmt: skip
        d.notify.drain()
        d.signal(signal.SIGHUP)
        d.notify.wait_for("READY=1")
        assert get(d.port, "/api/status")[0] == expect, page


def test_page_off_serves_metrics_only(make_daemon: Any) -> None:
    d = make_daemon(page="off")
    assert get(d.port, "/api/status")[0] == 404
    status, _, body = get(d.port, "/")
    assert status == 200 and b"GET /metrics" in body
    _, _, metrics = get(d.port, "/metrics")
    assert b"loomd_metrics_page" not in metrics


def test_a_frame_is_one_line_of_json_whatever_the_payload() -> None:
    """The SSE frame of any payload: one `data:` line (a newline would end the field), valid
    JSON, bounded, every cut saying so."""
    from loomd.bus.envelope import Event
    from loomd.web.sse import MAX_JSON, event_frame

    nasty = {
        "lines": "a\nb\r\nc\u2028d",
        "nan": float("nan"),
        "raw": b"\x00" * 4000,
        "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}},
        "many": list(range(100)),
        "html": "</script><img src=x onerror=alert(1)>",
        7: "a non-string key",
    }
    wide = {f"k{i}": "w" * 199 for i in range(12)}
    for payload in (nasty, wide, "x" * 100_000, None):
        frame = event_frame(Event.create("demo.frame", payload, sender="t\nx"))
        head, data, rest = frame.split(b"\n", 2)
        assert head == b"event: bus" and data.startswith(b"data: ") and rest == b"\n"
        assert len(data) < MAX_JSON + 600
        ev = json.loads(data[6:])
        assert ev["topic"] == "demo.frame" and ev["sender"] == "t\nx"
    ev = json.loads(event_frame(Event.create("d", nasty)).split(b"\n")[1][6:])
    p = ev["payload"]
    assert p["lines"] == "a\nb\r\nc\u2028d" and p["nan"] == "nan" and p["raw"] == "<4000 bytes>"
    assert p["deep"] == {"a": {"b": {"c": "…"}}} and p["many"][-1] == "… +88 items"
    assert p["7"] == "a non-string key"
    cut = json.loads(event_frame(Event.create("d", wide)).split(b"\n")[1][6:])["payload"]
    assert isinstance(cut, str) and cut.endswith(" chars)")


def test_assist_turns_show_text_intent_actions_reply_and_ms(make_daemon: Any) -> None:
    pytest.importorskip("hassil")
    d = make_daemon(llm=False, extra="[assist]\nenabled = true\nllm = false\n")
    wait_until(
        lambda: get_json(d.port, "/api/assist")["state"] == "running", what="the assist to run"
    )
    assert get_json(d.port, "/api/assist")["turns"] == []
    for text in ("what time is it", "turn on the <b>garage</b> light"):
        r = loomctl(d, "assist", text, "--json", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    turns = get_json(d.port, "/api/assist")["turns"]
    newest, older = turns[0], turns[1]  # newest first, as the flight recorder kept them
    assert older["transcript"] == "what time is it" and older["reply"]
    assert older["intent"]["name"] == "HassGetCurrentTime" and older["intent"]["via"] == "local"
    assert older["timings"]["total"] >= 0 and older["at"] <= time.time()
    assert newest["transcript"] == "turn on the <b>garage</b> light"  # data, shown as text
    assert newest["actions"] == [] and newest["intent"]["via"] == "none"
