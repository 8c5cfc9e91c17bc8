from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable

import pytest
import uvloop

from loomd.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Family, Histogram, render
from loomd.web.http import MetricsServer

DEADLINE = 5.0
# A direct opener: a proxy from the environment must not intercept 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- Histogram -------------------------------------------------------------------


def test_default_buckets_span_50us_to_1s() -> None:
    assert LATENCY_BUCKETS[0] == 0.00005 and LATENCY_BUCKETS[-1] == 1.0
    assert Histogram().bounds == LATENCY_BUCKETS


def test_observe_counts_into_le_buckets() -> None:
    h = Histogram([1.0, 2.0, 4.0])
    for v in (0.5, 1.0, 1.5, 4.0, 9.0, math.nan):
        h.observe(v)
    assert h.count == 5  # NaN is ignored
    assert h.sum == 16.0
    # A value equal to a bound belongs to that bucket (le = less or equal).
    assert h.cumulative() == [(1.0, 2), (2.0, 3), (4.0, 4), (math.inf, 5)]


def test_quantile_interpolates_within_a_bucket() -> None:
    h = Histogram([1.0, 2.0, 4.0])
    assert math.isnan(h.quantile(0.5))
    for _ in range(50):
        h.observe(0.5)
    for _ in range(50):
        h.observe(1.5)
    assert h.quantile(0.5) == 1.0
    assert h.quantile(0.75) == 1.5
    assert h.quantile(1.0) == 2.0
    assert h.quantile(0.0) == 0.0
    h.observe(100.0)
    assert h.quantile(1.0) == 4.0  # in +Inf: the highest finite bound is the best estimate
    with pytest.raises(ValueError, match="outside"):
        h.quantile(1.5)


def test_quantile_of_latencies_is_close() -> None:
    h = Histogram()
    for i in range(1, 1001):
        h.observe(i / 10000)  # 0.1 ms .. 100 ms, uniform
    assert 0.025 <= h.quantile(0.5) <= 0.05
    assert 0.05 <= h.quantile(0.99) <= 0.1


def test_histogram_needs_a_finite_bucket() -> None:
    with pytest.raises(ValueError):
        Histogram([math.inf])


# --- render ----------------------------------------------------------------------


def test_render_counter_with_escaping() -> None:
    text = render(
        [
            Family(
                "loomd_drops_total",
                "counter",
                'Events dropped\nby "QoS" \\ reason',
                [
                    ({"topic": 'a"b', "sub": "x\\y\nz"}, 3),
                    ({}, 1.5),
                ],
            )
        ]
    )
    assert text == (
        '# HELP loomd_drops_total Events dropped\\nby "QoS" \\\\ reason\n'
        "# TYPE loomd_drops_total counter\n"
        'loomd_drops_total{sub="x\\\\y\\nz",topic="a\\"b"} 3.0\n'
        "loomd_drops_total 1.5\n"
    )


def test_render_special_values() -> None:
    samples = [({"v": "inf"}, math.inf), ({"v": "-inf"}, -math.inf), ({"v": "nan"}, math.nan)]
    text = render([Family("g", "gauge", "special", samples)])
    assert text.splitlines()[2:] == ['g{v="inf"} +Inf', 'g{v="-inf"} -Inf', 'g{v="nan"} NaN']


def test_render_histogram_expands_buckets_sum_count() -> None:
    h = Histogram([0.001, 0.01])
    h.observe(0.0005)
    h.observe(0.5)
    text = render(
        [Family("loomd_stage_seconds", "histogram", "Stage latency", [({"stage": "stt"}, h)])]
    )
    assert text == (
        "# HELP loomd_stage_seconds Stage latency\n"
        "# TYPE loomd_stage_seconds histogram\n"
        'loomd_stage_seconds_bucket{le="0.001",stage="stt"} 1.0\n'
        'loomd_stage_seconds_bucket{le="0.01",stage="stt"} 1.0\n'
        'loomd_stage_seconds_bucket{le="+Inf",stage="stt"} 2.0\n'
        'loomd_stage_seconds_sum{stage="stt"} 0.5005\n'
        'loomd_stage_seconds_count{stage="stt"} 2.0\n'
    )


@pytest.mark.parametrize(
    "family",
    [
        Family("bad name", "gauge", "", []),
        Family("x", "gauge", "", [({"bad-label": "v"}, 1)]),
        Family("x", "gauge", "", [({"__reserved": "v"}, 1)]),
        Family("x", "kind", "", []),
        Family("x", "gauge", "", [({}, Histogram())]),
        Family("x", "histogram", "", [({}, 1.0)]),
        Family("x", "histogram", "", [({"le": "1"}, Histogram())]),
    ],
)
def test_render_rejects_invalid_families(family: Family) -> None:
    with pytest.raises(ValueError):
        render([family])


# --- the server ------------------------------------------------------------------


def families() -> Iterable[Family]:
    return [Family("loomd_up", "gauge", "1 while running", [({}, 1)])]


LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),  # what the daemon runs on
]


def serve(
    scenario: Callable[[MetricsServer], Awaitable[None]],
    collect: Callable[[], Iterable[Family]] = families,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> None:
    async def main() -> None:
        async with asyncio.timeout(DEADLINE):
            async with MetricsServer("127.0.0.1", 0, collect) as server:
                port = server.port
                await scenario(server)
            # Nothing is left behind: no handler tasks, no listening socket.
            assert asyncio.all_tasks() == {asyncio.current_task()}
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with OPENER.open(request, timeout=DEADLINE) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        return await reader.read()  # the server answers, then closes
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_get_metrics(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def scenario(server: MetricsServer) -> None:
        assert server.port > 0
        status, ctype, body = await asyncio.to_thread(get, server.url)
        assert (status, ctype) == (200, CONTENT_TYPE)
        assert body.decode() == render(families())
        status, _, body = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/")
        assert status == 200 and b"/metrics" in body
        status, _, body = await asyncio.to_thread(get, server.url + "?x=1")
        assert status == 200
        status, _, body = await asyncio.to_thread(get, server.url, "HEAD")
        assert status == 200 and body == b""

    serve(scenario, loop_factory=loop_factory)


def test_other_paths_and_methods() -> None:
    async def scenario(server: MetricsServer) -> None:
        base = f"http://127.0.0.1:{server.port}"
        assert (await asyncio.to_thread(get, base + "/metricsx"))[0] == 404
        assert (await asyncio.to_thread(get, base + "/metrics", "POST"))[0] == 405

    serve(scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_garbage_gets_400_and_the_server_lives_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def scenario(server: MetricsServer) -> None:
        port = server.port
        assert (await raw(port, b"\x00\xff\xfe garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(port, b"GET /metrics\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(port, b"GET metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(port, b"G" * 20000 + b"\r\n")).startswith(b"HTTP/1.1 400 ")
        many = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 200 + b"\r\n"
        assert (await raw(port, many)).startswith(b"HTTP/1.1 400 ")  # over 100 headers
        # A request cut short, or a client that connects and leaves, is hung up on
        # without an answer (uvicorn; the hand-written server said 400 to a closed reader).
        assert await raw(port, b"GET /metr") == b""
        assert await raw(port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200) == b""
        assert await raw(port, b"") == b""
        status, _, body = await asyncio.to_thread(get, server.url)
        assert status == 200 and body.startswith(b"# HELP loomd_up")

    serve(scenario, loop_factory=loop_factory)


def test_a_failing_collector_costs_one_scrape() -> None:
    calls = 0

    def flaky() -> Iterable[Family]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("collector bug")
        return families()

    async def scenario(server: MetricsServer) -> None:
        assert (await asyncio.to_thread(get, server.url))[0] == 500
        assert (await asyncio.to_thread(get, server.url))[0] == 200

    serve(scenario, flaky)


def test_closing_ends_stalled_connections() -> None:
    async def main() -> None:
        async with asyncio.timeout(DEADLINE):  # well before the 10 s request timeout
            async with MetricsServer("127.0.0.1", 0, families) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                # One whole request first, so the connection is surely accepted (kept
                # alive now), then half of a second one, and then nothing.
                writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"GET /metrics HTTP/1.1\r\n")
                await writer.drain()
            try:  # the server hung up without an answer: FIN, or RST if it closed the
                # socket before reading the half request (the kernel resets then)
                answer = await reader.read()
            except ConnectionResetError:
                answer = b""
            assert answer == b""
            assert asyncio.all_tasks() == {asyncio.current_task()}
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()

    asyncio.run(main())


def test_a_client_that_dribbles_its_request_is_hung_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection gets REQUEST_TIMEOUT_S to finish its request's head (shortened here),
    whether it says nothing or dribbles; a served client on the same server is unaffected."""
    import loomd.web.server

    monkeypatch.setattr(loomd.web.server, "REQUEST_TIMEOUT_S", 0.3)

    async def scenario(server: MetricsServer) -> None:
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        dribble = await asyncio.open_connection("127.0.0.1", server.port)
        t0 = asyncio.get_running_loop().time()
        dribble[1].write(b"GET /metrics HTTP/1.1\r\n")
        for _ in range(3):  # a header line now and then, never the end of the head
            await asyncio.sleep(0.1)
            dribble[1].write(b"X-Slow: 1\r\n")
        status, _, body = await asyncio.to_thread(get, server.url)
        assert status == 200 and body.startswith(b"# HELP loomd_up")
        for reader, writer in (silent, dribble):
            assert await reader.read() == b""  # hung up on, without an answer
            writer.close()
        assert asyncio.get_running_loop().time() - t0 < 3.0

    serve(scenario)
