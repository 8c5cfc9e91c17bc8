"""`AgentCtx`: what an agent's code gets, the same in process and over the SDK.

Everything is built on the `Bus` API (publish, subscribe, request, reply), plus a small
backend for what needs the daemon: capability calls and the agent's state namespace. The
in-process backend calls the action broker and LMDB directly (no encoding); the SDK backend
sends the same requests over the socket (`caps.invoke`, `state.*` control operations).
Collaboration (fanout, barrier, contract net) uses only the bus, so it is literally the same
code in both places.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from loomd.agents.broker import ActionBroker, CallError, Result
from loomd.agents.direct import DirectCaller, end_reader
from loomd.bus.envelope import Event, QoS
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    BarrierReply,
    BarrierRequest,
    Bid,
    BidAward,
    BidReject,
    CapCode,
    CapInvoke,
    EventType,
)

if TYPE_CHECKING:
    from loomd.bus.acl import Caller
    from loomd.bus.api import Bus
    from loomd.state.kv import KV

__all__ = [
    "AgentCtx",
    "AgentState",
    "Award",
    "Backend",
    "BarrierTimeout",
    "FanoutTimeout",
    "LocalBackend",
    "ReplyMux",
    "SdkBackend",
    "inbox",
]

T = TypeVar("T")

# Topics served by the agents component (the daemon side of the collaboration primitives).
STRATEGIES = ("any", "first_k", "majority", "all")


def inbox(agent_id: str) -> str:
    return f"agent.{agent_id}.inbox"


class FanoutTimeout(RequestTimeout):
    """The strategy's quorum was not reached in time; `replies` holds what arrived."""

    def __init__(self, message: str, replies: list[Event]) -> None:
        super().__init__(message)
        self.replies = replies


class BarrierTimeout(RequestTimeout):
    pass


@dataclass(frozen=True)
class Award:
    """The outcome of a contract net: the winning bid, its result, and every bid seen."""

    winner: str  # the winning bidder's agent id
    bid: Any
    result: Any
    bids: list[Event]


class AgentState(Protocol):
    """The agent's own key-value namespace (CBOR values)."""

    async def get(self, key: str, default: Any = None) -> Any: ...
    async def put(self, key: str, value: Any) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def items(self, prefix: str = "") -> list[tuple[str, Any]]: ...


class Backend(Protocol):
    async def call(
        self, name: str, params: dict[str, Any], timeout: float, key: str | None
    ) -> Result: ...

    def state(self, namespace: str) -> AgentState: ...


class _LocalState:
    def __init__(self, kv: KV) -> None:
        self._kv = kv

    async def get(self, key: str, default: Any = None) -> Any:
        return self._kv.get(key, default)

    async def put(self, key: str, value: Any) -> None:
        await self._kv.put(key, value)

    async def delete(self, key: str) -> bool:
        return await self._kv.delete(key)

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        return self._kv.items(prefix)


class LocalBackend:
    def __init__(
        self,
        broker: ActionBroker,
        kv: Callable[[str], KV],
        caller: Callable[[], Caller | None] | None = None,
    ) -> None:
        self.broker = broker
        self._kv = kv
        self._caller = caller  # the plugin's identity and grants (looked up per call)

    async def call(
        self, name: str, params: dict[str, Any], timeout: float, key: str | None
    ) -> Result:
        caller = self._caller() if self._caller is not None else None
        return await self.broker.call(
            name, params, timeout=timeout, idempotency_key=key, caller=caller
        )

    def state(self, namespace: str) -> AgentState:
        return _LocalState(self._kv(namespace))


class _RemoteState:
    """State over the socket through the `state` component's control operations."""

    def __init__(self, client: Any, namespace: str) -> None:
        self._c = client
        self._ns = namespace

    async def get(self, key: str, default: Any = None) -> Any:
        r = await self._c.call("state.get", args=[key], ns=self._ns)
        return r["value"] if r.get("found") else default

    async def put(self, key: str, value: Any) -> None:
        await self._c.call("state.put", args=[key, value], ns=self._ns)

    async def delete(self, key: str) -> bool:
        return bool((await self._c.call("state.del", args=[key], ns=self._ns))["deleted"])

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        keys = (await self._c.call("state.ls", args=[prefix], ns=self._ns))["keys"]
        out = []
        for k in keys:  # one round trip per key: the state ops have no bulk read
            r = await self._c.call("state.get", args=[k], ns=self._ns)
            if r.get("found"):
                out.append((k, r["value"]))
        return out


class ReplyMux:
    """Requests that share one reply subscription, matched by correlation id.

    `Bus.request` opens a subscription per request; over the socket, subscribing and
    unsubscribing are round trips of their own (a call took twice as long). The one
    subscription is opened on first use and kept until `close()`."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus
        self.topic = f"thread.{os.urandom(16).hex()}.reply"
        self._sub: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._waiting: dict[bytes, asyncio.Future[Event]] = {}
        self._early: dict[bytes, Event] = {}  # replies that beat their waiter's registration
        self._opening = asyncio.Lock()

    async def _open(self) -> None:
        async with self._opening:
            if self._sub is None:
                sub = self._bus.subscribe(self.topic, QoS.RELIABLE)
                await sub.ready()
                self._sub = sub
                self._pump = asyncio.ensure_future(self._run(sub))

    async def _run(self, sub: Any) -> None:
        async for ev in sub:
            cid = ev.correlation_id
            fut = self._waiting.pop(cid, None) if cid is not None else None
            if fut is not None and not fut.done():
                fut.set_result(ev)
            elif cid is not None:
                self._early[cid] = ev
                while len(self._early) > 256:  # replies nobody waits for any more
                    self._early.pop(next(iter(self._early)))

    async def request(
        self, topic: str, payload: Any, timeout: float, type: str | None = None
    ) -> Event:
        if self._sub is None:
            await self._open()
        ev = await self._bus.publish(topic, payload, reply_to=self.topic, wait=False, type=type)
        reply = self._early.pop(ev.id, None)
        if reply is not None:
            return reply
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiting[ev.id] = fut
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see loomd/component.py
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no reply on {topic} within {timeout:g} s") from None
        finally:
            self._waiting.pop(ev.id, None)

    def pending(self) -> int:
        return len(self._waiting)

    async def close(self) -> None:
        await end_reader(self._pump, self._sub)
        self._sub = self._pump = None


class SdkBackend:
    """For `loomd.sdk.Client`: capability calls go to the agents component over the bus,
    sharing one reply subscription (`ReplyMux`)."""

    def __init__(self, client: Any) -> None:
        self._c = client
        self._mux = ReplyMux(client)
        self._direct = DirectCaller(client, self._mux)

    async def call(
        self, name: str, params: dict[str, Any], timeout: float, key: str | None
    ) -> Result:
        if key is None:  # one hop, if the broker grants it (loomd/agents/direct.py)
            r = await self._direct.call(name, params, timeout)
            if r is not None:
                return r
        body = CapInvoke(name, params, timeout, key).to_payload()
        try:
            # a little longer than the broker's own deadline, which answers `timeout`
            reply = await self._mux.request(CapInvoke.TOPIC, body, timeout + 1.0, CapInvoke.TYPE)
        except RequestTimeout:
            return Result(CapCode.TIMEOUT, error=f"no answer from the daemon within {timeout:g} s")
        return Result.from_payload(reply.payload)

    def pending(self) -> int:
        return self._mux.pending() + self._direct.inflight

    async def close(self) -> None:
        await self._direct.close()
        await self._mux.close()

    def state(self, namespace: str) -> AgentState:
        return _RemoteState(self._c, namespace)


def _quorum(strategy: str, n: int, k: int | None) -> int:
    if strategy == "any":
        return 1
    if strategy == "first_k":
        if k is None or k < 1:
            raise LoomdError("fanout strategy first_k needs k >= 1")
        return min(k, n)
    if strategy == "majority":
        return n // 2 + 1
    if strategy == "all":
        return n
    raise LoomdError(f"unknown fanout strategy {strategy!r}: one of {', '.join(STRATEGIES)}")


class AgentCtx:
    """An agent's handle on loomd. The same class serves in-process agents (over `LocalBus`)
    and SDK agents (over `loomd.sdk.Client`); only the backend differs."""

    def __init__(
        self,
        agent_id: str,
        bus: Bus,
        backend: Backend,
        *,
        settings: Any = None,
    ) -> None:
        self.id = agent_id
        self.bus = bus
        self._backend = backend
        self.settings = settings
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"loomd.agent.{agent_id}"), {"agent": agent_id}
        )
        self.state = backend.state(f"agent.{agent_id}")
        self.inbox = inbox(agent_id)

    # -- bus --------------------------------------------------------------------------------
    async def publish(self, topic: str, payload: Any = None, **kw: Any) -> Event:
        return await self.bus.publish(topic, payload, **kw)

    async def request(
        self, topic: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
    ) -> Event:
        return await self.bus.request(topic, payload, timeout=timeout, **kw)

    async def reply(self, request: Event, payload: Any = None, **kw: Any) -> Event:
        return await self.bus.reply(request, payload, **kw)

    # -- collaboration ----------------------------------------------------------------------
    async def fanout(
        self,
        topics: Sequence[str],
        payload: Any = None,
        *,
        strategy: str = "all",
        timeout: float = 5.0,
        k: int | None = None,
    ) -> list[Event]:
        """Send `payload` as a request to each topic and gather replies until the strategy
        is satisfied: `any` (1), `first_k` (k), `majority` (n//2+1), `all` (n). Returns the
        replies in arrival order; raises `FanoutTimeout` (with the partial replies) when the
        quorum is not reached in `timeout`."""
        topics = list(topics)
        need = _quorum(strategy, len(topics), k)
        thread = os.urandom(16)
        reply_topic = f"thread.{thread.hex()}.reply"
        replies: list[Event] = []
        async with self.bus.subscribe(reply_topic, QoS.RELIABLE) as sub:
            ids = set()
            for t in topics:
                ev = await self.bus.publish(
                    t, payload, thread_id=thread, reply_to=reply_topic, wait=False
                )
                ids.add(ev.id)
            try:
                async with asyncio.timeout(timeout):
                    while len(replies) < need:
                        r = await sub.get()
                        if r.correlation_id in ids:
                            ids.discard(r.correlation_id)  # one reply per topic counts
                            replies.append(r)
            except TimeoutError:
                raise FanoutTimeout(
                    f"fanout ({strategy}) got {len(replies)} of {need} replies "
                    f"within {timeout:g} s",
                    replies,
                ) from None
        return replies

    async def barrier(self, name: str, n: int, timeout: float = 10.0) -> int:
        """Wait until `n` participants (any agents, in process or not) reached barrier
        `name`; returns how many arrived. Raises `BarrierTimeout`; the daemon forgets a
        barrier that timed out, so nothing is left behind."""
        body = BarrierRequest(name, n, timeout, self.id)
        try:
            ev = await self.bus.request(body.TOPIC, body.to_payload(), timeout=timeout + 1.0)
        except RequestTimeout:
            raise BarrierTimeout(f"barrier {name!r}: the daemon did not answer") from None
        r = BarrierReply.from_event(ev)
        if not r.ok:
            raise BarrierTimeout(f"barrier {name!r}: {r.error or 'timed out'}")
        return r.arrived

    async def contract_net(
        self,
        topic: str,
        cfp: Any,
        *,
        window: float = 1.0,
        award: Callable[[list[Event]], Event | None] | None = None,
        timeout: float = 5.0,
    ) -> Award:
        """Announce `cfp` on `topic`, collect bids for `window` seconds (a bid is a reply
        `{"score": x, ...}`, sent with `ctx.bid`), award the one `award` picks (default: the
        highest score) and return the winner's result. Losers get `{"award": false}`."""
        thread = os.urandom(16)
        reply_topic = f"thread.{thread.hex()}.reply"
        bids: list[Event] = []
        async with self.bus.subscribe(reply_topic, QoS.RELIABLE) as sub:
            ev = await self.bus.publish(
                topic, cfp, thread_id=thread, reply_to=reply_topic, wait=False,
                type=EventType.CNET_CFP,
            )  # fmt: skip
            try:
                async with asyncio.timeout(window):
                    while True:
                        b = await sub.get()
                        if b.correlation_id == ev.id and b.reply_to:
                            bids.append(b)
            except TimeoutError:
                pass
        pick = award or _max_score
        winner = pick(bids) if bids else None
        if winner is None:
            raise RequestTimeout(f"contract net on {topic}: no acceptable bid in {window:g} s")
        reject = BidReject()
        for b in bids:
            if b is not winner and b.reply_to:
                await self.bus.publish(
                    b.reply_to, reject.to_payload(), correlation_id=b.id, wait=False,
                    type=reject.TYPE,
                )  # fmt: skip
        assert winner.reply_to is not None
        prize = BidAward(cfp, winner.payload)
        done = await self.bus.request(
            winner.reply_to, prize.to_payload(),
            timeout=timeout, type=prize.TYPE, meta={"bid": winner.id.hex()},
        )  # fmt: skip
        who = _bid(winner)
        return Award(who.agent if who and who.agent else winner.sender, winner.payload,
                     done.payload, bids)  # fmt: skip

    async def bid(self, cfp: Event, score: float, **info: Any) -> Event:
        """Answer a contract-net call for proposals; an award arrives on this agent's
        inbox as an event of type `cnet.award` (reply to it with the result)."""
        bid = Bid(score, self.id, info)
        return await self.bus.reply(cfp, bid.to_payload(), reply_to=self.inbox, type=bid.TYPE)

    # -- capabilities -----------------------------------------------------------------------
    async def call(
        self,
        capability: str,
        *,
        timeout: float = 10.0,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Any:
        """Call a capability; returns its value or raises `CallError` with the code."""
        result = await self._backend.call(capability, params, timeout, idempotency_key)
        return result.unwrap()

    async def try_call(
        self,
        capability: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        idempotency_key: str | None = None,
    ) -> Result:
        """Like `call`, returning the `Result` (code, value, error) instead of raising."""
        return await self._backend.call(capability, dict(params or {}), timeout, idempotency_key)

    # -- work off the loop ------------------------------------------------------------------
    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        """Run blocking code in a worker thread so the event loop (and every other agent)
        keeps going."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kw))


def _bid(ev: Event) -> Bid | None:
    """The bid an event carries; None if it is no bid (a bidder's mistake loses it the job)."""
    try:
        return Bid.from_payload(ev.payload)
    except LoomdError:
        return None


def _max_score(bids: Iterable[Event]) -> Event | None:
    best: Event | None = None
    best_score = float("-inf")
    for b in bids:
        bid = _bid(b)
        if bid is not None and bid.score > best_score:
            best, best_score = b, bid.score
    return best


__all__ += ["CallError"]
