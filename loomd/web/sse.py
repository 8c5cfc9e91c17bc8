"""The live tail: bus events as server-sent events, one bounded queue per client.

A pump moves events from a realtime bus subscription into the client's queue and never
waits on the client; the writer sends what is queued. A client that reads too slowly
loses the oldest queued events and is told how many (`event: dropped`). So a stalled
browser costs one bounded queue and never slows the bus or the loop (a realtime
subscription gives publishers no back-pressure)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _str
from typing import TYPE_CHECKING, Any

from loomd.bus.envelope import QoS
from loomd.errors import ProtocolError

if TYPE_CHECKING:
    from loomd.bus.api import Bus
    from loomd.bus.envelope import Event
    from loomd.web.server import Receive, Send

__all__ = ["EventStream", "event_frame", "event_record", "summarise"]

log = logging.getLogger(__name__)

MAX_TEXT = 200  # characters of one string
MAX_ITEMS = 12  # keys of a map, items of a list
MAX_DEPTH = 4
MAX_JSON = 2048  # bytes of one summarised payload
KEEPALIVE_S = 15.0  # a comment line: proxies keep the stream, a dead peer is noticed
WRITE_STALL_S = 30.0  # a client that takes nothing for this long is cut off

SSE_HEADERS = [
    (b"Content-Type", b"text/event-stream; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
]
_END_S = 1.0  # time to send the end of a stream to a client still reading


def summarise(value: Any, depth: int = 0) -> Any:
    """A small JSON-safe picture of a payload: long strings, big maps and lists, deep
    nesting and binary data are cut, and say how much was cut."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        if len(value) <= MAX_TEXT:
            return value
        return f"{value[:MAX_TEXT]}… (+{len(value) - MAX_TEXT} chars)"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        out = {
            summarise(str(k)): summarise(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]
        }
        if len(value) > MAX_ITEMS:
            out["…"] = f"+{len(value) - MAX_ITEMS} keys"
        return out
    if isinstance(value, list | tuple):
        items = [summarise(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"… +{len(value) - MAX_ITEMS} items")
        return items
    return summarise(repr(value), depth)


def _small(value: Any) -> bool:
    """A flat map of a few plain scalars and short strings: most bus payloads, which the
    summary would return unchanged (so the tail skips building a copy)."""
    if type(value) is not dict or len(value) > MAX_ITEMS:
        return False
    for k, v in value.items():
        if type(k) is not str or len(k) > MAX_TEXT:
            return False
        t = type(v)
        if t is str:
            if len(v) > MAX_TEXT:
                return False
        elif not (v is None or t is int or t is bool or (t is float and math.isfinite(v))):
            return False
    return True


def payload_json(ev: Event) -> str:
    """The summarised payload as JSON text, at most about MAX_JSON characters."""
    try:
        payload = ev.payload
        if not _small(payload):
            payload = summarise(payload)
    except ProtocolError as exc:
        payload = f"<undecodable: {exc}>"
    text = json.dumps(payload, separators=(",", ":"))
    if len(text) > MAX_JSON:
        text = json.dumps(text[:MAX_JSON] + f"… (+{len(text) - MAX_JSON} chars)")
    return text


def event_record(ev: Event) -> dict[str, Any]:
    """What the tail shows of one event: the envelope's plain fields and a summary."""
    return json.loads(event_frame(ev).partition(b"data: ")[2])  # type: ignore[no-any-return]


def event_frame(ev: Event) -> bytes:
    """One `event: bus` frame: the envelope's plain fields and the summarised payload.
    Assembled by hand around the C string encoder: a forwarded event is the tail's whole
    per-event cost, and this is a third cheaper than one `json.dumps` of a dict."""
    return (
        'event: bus\ndata: {"topic":' + _str(ev.topic)
        + ',"type":' + _str(ev.type)
        + ',"sender":' + _str(summarise(ev.sender))
        + ',"qos":' + _str(ev.qos)
        + ',"ts":' + repr(ev.ts / 1e9)
        + ',"id":"' + ev.id.hex()
        + '","payload":' + payload_json(ev) + "}\n\n"
    ).encode()  # fmt: skip


class EventStream:
    """One SSE client: `await stream(receive, send)` (ASGI) runs until the client goes."""

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        *,
        queue: int,
        on_drop: Callable[[int], None],
        keepalive_s: float = KEEPALIVE_S,
        stall_s: float = WRITE_STALL_S,
    ) -> None:
        self.bus = bus
        self.pattern = pattern
        self.queue: collections.deque[Event] = collections.deque(maxlen=queue)
        self.dropped = 0  # not yet told to the client
        self.dropped_total = 0
        self.sent = 0
        self._on_drop = on_drop
        self._keepalive_s = keepalive_s
        self._stall_s = stall_s
        self._wake = asyncio.Event()

    async def __call__(self, receive: Receive, send: Send) -> None:
        async with self.bus.subscribe(self.pattern, QoS.REALTIME) as sub:
            await sub.ready()
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            hello = b": loomd live tail\nretry: 2000\n\n"
            await send({"type": "http.response.body", "body": hello, "more_body": True})
            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(self._pump(sub))
                gone = tg.create_task(_until_closed(receive))
                sending = tg.create_task(self._send(send))
                # Whichever ends first (the client went, or writing failed) ends them all.
                await asyncio.wait({gone, sending, pump}, return_when=asyncio.FIRST_COMPLETED)
                for task in (pump, gone, sending):
                    task.cancel()
        # Leaving `async with subscribe` unsubscribed: nothing stays behind for this client.
        # End the response (a no-op once the client has gone); a client that stopped
        # reading cannot take even that, and its connection is closed without it.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_END_S):
                await send({"type": "http.response.body", "body": b""})

    async def _pump(self, sub: Any) -> None:
        # The in-process subscription counts what the bus itself dropped for it (its own
        # realtime queue, when this pump falls behind): the client is told those too.
        stats = getattr(sub, "stats", None)
        seen = 0
        async for ev in sub:
            lost = 0
            if stats is not None:
                bus_lost = sum(stats.dropped.values())
                lost, seen = bus_lost - seen, bus_lost
            if len(self.queue) == self.queue.maxlen:
                lost += 1
            if lost:
                self.dropped += lost
                self.dropped_total += lost
                self._on_drop(lost)
            self.queue.append(ev)  # a full deque drops its oldest
            self._wake.set()

    async def _send(self, send: Send) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._keepalive_s):
                        await self._wake.wait()
                self._wake.clear()
                chunks: list[bytes] = []
                if self.dropped:
                    chunks.append(_frame("dropped", {"dropped": self.dropped}))
                    self.dropped = 0
                while self.queue:
                    chunks.append(event_frame(self.queue.popleft()))
                    self.sent += 1
                if not chunks:
                    chunks.append(b": keepalive\n\n")
                # uvicorn's send waits while the socket's buffer is full: a client that
                # takes nothing for stall_s is cut off
                async with asyncio.timeout(self._stall_s):
                    body = b"".join(chunks)
                    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _until_closed(receive: Receive) -> None:
    """Returns when the client goes (an SSE client never sends more)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _frame(event: str, data: Any) -> bytes:
    # JSON on one line: a newline in the data would end the SSE field early.
    body = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()
