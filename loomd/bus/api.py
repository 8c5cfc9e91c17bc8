"""The one agent-facing bus API.

Everything that is not the broker itself (agents, the router, the voice pipeline, the
bridges, plugins) talks to the bus through `Bus`. Two implementations pass the same
contract test (`tests/bus/test_bus_contract.py`): `LocalBus`, the in-process adapter over
the broker, and `loomd.sdk.Client`, over the daemon's socket. So any part can move out of
process without a change to its code.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self, runtime_checkable

from loomd.bus.envelope import (
    DEFAULT_TTL,
    QOS_VALUES,
    Event,
    QoS,
    check_outgoing,
    plain_event,
)
from loomd.errors import LoomdError, ProtocolError, RequestTimeout
from loomd.messages import BusStats

__all__ = ["Bus", "BusSubscription", "SubSpec", "qos_classes", "reply_to", "request_reply"]


@runtime_checkable
class BusSubscription(Protocol):
    """An open subscription: iterate it (`async for ev in sub`), or `await sub.get(timeout)`.

    Closing it (or leaving `async with`) unsubscribes; iteration then ends."""

    pattern: str

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    async def get(self, timeout: float | None = None) -> Event: ...

    async def batch(self, n: int = 256) -> list[Event]:
        """Wait for an event, then return it with those queued behind it, up to `n`, in
        order (a forwarder's per-event cost of the iterator paid once per batch); [] once
        closed. Each counts as consumed, as one taken by iteration."""
        ...

    async def ready(self) -> Self:
        """Return once events published from now on will reach this subscription."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class SubSpec(NamedTuple):
    """What `Bus.subscribe` was asked, handed to the implementation's `_open`."""

    pattern: str
    qos: QoS | str | None
    window: int | None
    since: int | None
    max_age_ms: int | None
    classes: frozenset[str] | None = None  # the publish classes it takes (None: every one)


# The subscription class an implementation returns (`LocalBus`: the broker's `Subscriber`,
# the SDK `Client`: its `Subscription`); a plain `Bus` gives a `BusSubscription`.
if TYPE_CHECKING:
    from typing_extensions import TypeVar

    Sub_co = TypeVar("Sub_co", bound=BusSubscription, covariant=True, default=BusSubscription)
else:
    from typing import TypeVar

    Sub_co = TypeVar("Sub_co", bound=BusSubscription, covariant=True)


@runtime_checkable
class Bus(Protocol[Sub_co]):
    """Publish, subscribe, request and reply: the whole of what a part may do with the bus."""

    name: str

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        qos: QoS | str = QoS.RELIABLE,
        wait: bool = True,
        type: str | None = None,
        thread_id: bytes | None = None,
        correlation_id: bytes | None = None,
        reply_to: str | None = None,
        ttl: int = DEFAULT_TTL,
        meta: dict[str, Any] | None = None,
    ) -> Event:
        """Publish one event. Realtime and batched never wait. Reliable waits for credit and,
        with `wait=True`, for the durable ack (journaled first on durable topics); a refused
        publish raises `LoomdError` naming why. What the daemon would refuse (a bad topic,
        ttl or qos) raises here, before anything is sent.

        Written once, here, for both implementations (they subclass `Bus`): the event is
        checked (`check_outgoing`) and built, then handed to the implementation's
        `_deliver`."""
        check_outgoing(topic, qos, ttl)
        if thread_id is None and correlation_id is None and reply_to is None and not meta:
            ev = plain_event(topic, payload, type or topic, self.name, str(qos), ttl)
        else:
            ev = Event.create(
                topic,
                payload,
                type=type,
                sender=self.name,
                qos=qos,
                thread_id=thread_id,
                correlation_id=correlation_id,
                reply_to=reply_to,
                ttl=ttl,
                meta=meta,
            )
        pending = self._deliver(ev, qos == QoS.RELIABLE, wait)
        if pending is not None:
            await pending
        return ev

    async def forward(
        self, ev: Event, *, ttl: int, meta: Mapping[str, Any], wait: bool = True
    ) -> Event:
        """Publish `ev`, an event received from elsewhere (a peer board's frame), again on
        this bus as this part: its topic, type, qos and body as they are (the body is never
        decoded), a fresh id and time, `ttl`, and its meta with `meta` set over it. Its
        header is cut from a template of its shape, not encoded per event (`Event.forwarded`).
        Refused as `publish` refuses (a bad topic or ttl); waits as `publish` does.

        Written once, here, for both implementations: handed to their `_deliver`."""
        out = ev.forwarded(self.name, ttl, meta)
        qos = out.header["qos"]  # the new event's header map: no decode
        check_outgoing(out.topic, qos, ttl)
        pending = self._deliver(out, qos == QoS.RELIABLE, wait)
        if pending is not None:
            await pending
        return out

    def _deliver(self, ev: Event, reliable: bool, wait: bool) -> Awaitable[None] | None:
        """Send a checked event: None once it is on its way, or what to await first (a
        reliable publish's credit and, with `wait`, its durable ack)."""
        ...

    def subscribe(
        self,
        pattern: str,
        qos: QoS | str | None = None,
        *,
        window: int | None = None,
        since: int | None = None,
        max_age_ms: int | None = None,
        classes: Iterable[QoS | str] | None = None,
    ) -> Sub_co:
        """Subscribe to an AMQP-style pattern (`*` one segment, `#` zero or more); iterate
        the result with `async for`. Reliable subscriptions resume from the journal after a
        daemon restart; `since` replays durable events after that seq. `window`: over the
        socket, unacknowledged reliable deliveries (default: the daemon's credit window).
        `max_age_ms` (realtime only): events older than this when they would be delivered
        are dropped and counted as `too_old` (a consumer that wants fresh data).
        `classes`: take only events published in these QoS classes (default: every class,
        each queued in the subscription's own): a peer link's reliable forwarder takes
        reliable events only, its realtime one the rest.

        Written once, here, for both implementations: the options go to their `_open`."""
        return self._open(SubSpec(pattern, qos, window, since, max_age_ms, qos_classes(classes)))

    def _open(self, spec: SubSpec) -> Sub_co:
        """Open the subscription `spec` asks for (in process: on the broker; over the
        socket: a `Subscription` the daemon confirms)."""
        ...

    async def request(
        self, topic: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
    ) -> Event:
        """Publish on `topic` and return the first reply (raises `RequestTimeout`). The reply
        subscription is gone when this returns, however it returns."""
        ...

    async def reply(self, request: Event, payload: Any = None, **kw: Any) -> Event:
        """Answer `request` on its `reply_to`, with its id as the correlation id."""
        ...

    async def listeners(self, topic: str) -> int:
        """How many subscriptions (of any part, in process or not) an event published on
        `topic` now would reach: 0 means nobody listens (a requester that left)."""
        ...

    async def stats(self) -> BusStats:
        """The bus's counters (events in and out, drops by reason) and every subscription
        with its owner, depth, deliveries and drops."""
        ...


def qos_classes(classes: Iterable[QoS | str] | None) -> frozenset[str] | None:
    """A subscription's `classes` option, checked: None (every class) or a non-empty set of
    QoS class names; ProtocolError otherwise (the daemon checks the same, `_op_sub`)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = (classes,)
    out = frozenset(str(c) for c in classes)
    if not out or not out <= QOS_VALUES:
        raise ProtocolError(
            "invalid classes", f"{sorted(out)!r}: expected some of realtime, batched, reliable"
        )
    return out


# -- request and reply, written once for every implementation ----------------------------------
async def request_reply(
    bus: Bus, topic: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
) -> Event:
    """`Bus.request`: subscribe to a fresh `thread.<id>.reply`, publish with `reply_to` set,
    return the first reply with the request's id as correlation id. The subscription is
    made before the publish (in order on one socket, at once in process) and closed
    however this ends."""
    thread_id = os.urandom(16)
    reply_topic = f"thread.{thread_id.hex()}.reply"
    sub = bus.subscribe(reply_topic, QoS.RELIABLE)
    try:
        ev = await bus.publish(
            topic, payload, thread_id=thread_id, reply_to=reply_topic, wait=False, **kw
        )
        try:
            async with asyncio.timeout(timeout):
                async for reply in sub:
                    if reply.correlation_id == ev.id:
                        return reply
        except TimeoutError:
            raise RequestTimeout(f"no reply on {topic} within {timeout:g} s") from None
        raise LoomdError("the bus closed while waiting for a reply")
    finally:
        await sub.close()


async def reply_to(bus: Bus, request: Event, payload: Any = None, **kw: Any) -> Event:
    """`Bus.reply`: publish on the request's `reply_to`, correlated, on its thread."""
    if not request.reply_to:
        raise LoomdError(f"event {request.id.hex()} on {request.topic} has no reply_to")
    return await bus.publish(
        request.reply_to, payload, correlation_id=request.id, thread_id=request.thread_id, **kw
    )
