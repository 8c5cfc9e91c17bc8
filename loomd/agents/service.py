"""The daemon side of the capability protocol and the barrier, on the bus: `caps.invoke`
(calls into the action broker), `caps.list`, `caps.register`/`caps.unregister` of SDK
providers kept on a lease (`caps.lease.<id>`), `collab.barrier`, and the idempotency sweep.

The agents component owns it beside the plugin host and gives it its collaborators
explicitly: the bus, the broker, its settings and how to report an error."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from loomd.agents.broker import (
    ActionBroker,
    CapabilityError,
    InvalidParams,
    Provider,
    ProviderUnavailable,
    Report,
    unless_gone,
)
from loomd.agents.capability import CapabilitySpec
from loomd.agents.ctx import ReplyMux
from loomd.agents.direct import IN_PROCESS, grant_mac, in_process_broker
from loomd.agents.settings import AgentsSettings
from loomd.bus.acl import UNKNOWN_CALLER
from loomd.bus.api import Bus
from loomd.bus.envelope import Event, QoS
from loomd.bus.identity import Identity, IdentityKind
from loomd.component import Inbox
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    BarrierReply,
    BarrierRequest,
    CapCode,
    CapGrant,
    CapGrantAsk,
    CapInfo,
    CapInvoke,
    CapResult,
    CapsGone,
    CapsLease,
    CapsList,
    CapsRegister,
    CapsRegistered,
    CapsUnregister,
    ErrorCode,
    Topic,
)
from loomd.messages.base import _Payload

__all__ = ["CapabilityService", "RemoteProvider"]

LEASE_PATTERN = "caps.lease.*"
NO_GRANT_RECHECK_S = 10.0  # one-hop calls off: a caller asks for a grant again this often
IN_PROCESS_LEASE_S = 30.0  # the lease of providers inside the daemon (home, mcp servers)

P = TypeVar("P", bound=_Payload)


class RemoteProvider(Provider):
    """Capabilities of an SDK client. It keeps a lease alive by publishing on
    `caps.lease.<id>`; when the lease runs out (the process died) every in-flight call
    fails with `provider_unavailable` at once."""

    kind = "sdk"

    def __init__(self, pid: str, mux: ReplyMux, lease_s: float) -> None:
        self.id = pid
        self.mux = mux
        self.lease_s = lease_s
        self.seen = time.monotonic()
        self.dead: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight = 0
        self.token: Any = None
        self.owner: Identity | None = None  # who registered it (None: the daemon itself)
        self.endpoint = ""  # where it takes one-hop calls ("" : only through the broker)
        self.grant_key = b""  # the HMAC key of its grants (loomd/agents/direct.py)
        self.local: ActionBroker | None = None  # in the daemon: its broker, called straight

    def die(self) -> None:
        if not self.dead.done():
            self.dead.set_result(None)

    async def invoke(self, spec: CapabilitySpec, params: dict[str, Any], left: float) -> Any:
        if self.dead.done():
            raise ProviderUnavailable(f"provider {self.id} is gone")
        if self.local is not None:  # inside the daemon: its own provider, straight
            # The agents' broker has admitted the call, checked the params against this
            # very spec and runs the deadline; what the provider raises it maps to codes.
            entry = self.local.resolve(spec.full)
            if entry is None:
                raise ProviderUnavailable(f"provider {self.id} no longer offers {spec.full}")
            entry.calls += 1
            self.inflight += 1
            try:
                return await entry.provider.invoke(entry.spec, params, left)
            finally:
                self.inflight -= 1
        self.inflight += 1
        req = asyncio.ensure_future(
            self.mux.request(
                f"caps.call.{self.id}",
                CapInvoke(spec.full, params, left).to_payload(),
                left + 1.0,
                CapInvoke.TYPE,
            )
        )
        try:
            ev = await unless_gone(req, self.dead, f"provider {self.id}")
        except RequestTimeout:
            raise TimeoutError from None
        finally:
            self.inflight -= 1
        r = CapResult.from_payload(ev.payload)
        return _outcome(r.code, r.value, r.error, f"provider answered {ev.payload!r:.80}")


def _outcome(code: str, value: Any, error: str, answered: str = "") -> Any:
    """A provider's answer as the broker takes it: the value, or the exception its code
    stands for."""
    if code == CapCode.OK:
        return value
    if code == CapCode.CAPABILITY_ERROR:
        raise CapabilityError(error)
    if code == CapCode.TIMEOUT:
        raise TimeoutError
    if code == CapCode.PROVIDER_UNAVAILABLE:
        raise ProviderUnavailable(error)
    if code == CapCode.INVALID_PARAMS:
        raise InvalidParams(error)
    raise RuntimeError(error or answered)


@dataclass
class _Barrier:
    n: int
    waiting: list[Event]
    timer: asyncio.TimerHandle | None = None


class CapabilityService:
    """Serves the broker and the barriers on the bus; `workers()` are the loops the
    component runs in its task group (each restarted on a crash)."""

    def __init__(
        self,
        bus: Bus,
        broker: ActionBroker,
        settings: Callable[[], AgentsSettings],
        report: Report,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.bus = bus
        self.broker = broker
        self.settings = settings  # the component's current settings (they reload)
        self._report = report
        self.log = log
        self.providers: dict[str, RemoteProvider] = {}
        self.barriers: dict[str, _Barrier] = {}
        self.intake = True
        self._forbidden_at = -1.0
        self._forbidden_quiet = 0
        self._serving: set[asyncio.Task[None]] = set()
        self._mux: ReplyMux | None = None  # replies of SDK providers, one subscription

    def workers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("invoke", self._serve_invoke),
            ("grant", self._serve_grant),
            ("barrier", self._serve_barrier),
            ("list", self._serve_list),
            ("register", self._serve_register),
            ("unregister", self._serve_unregister),
            ("leases", self._watch_leases),
            ("lease-expiry", self._expire_leases),
            ("idempotency", self._sweep_idempotency),
        ]

    def pending(self) -> int:
        return len(self._serving)

    async def close(self) -> None:
        for b in self.barriers.values():
            if b.timer:
                b.timer.cancel()
        self.barriers.clear()
        if self._mux is not None:
            await self._mux.close()

    def forbidden(self, why: str, cap: str) -> None:
        """Report a refused call, at most once a second (a flood of them must not flood
        the log): the rest are counted and named in the next report."""
        now = time.monotonic()
        if now - self._forbidden_at < 1.0:
            self._forbidden_quiet += 1
            return
        more = f" (and {self._forbidden_quiet} more refused calls)" if self._forbidden_quiet else ""
        self._forbidden_at, self._forbidden_quiet = now, 0
        self._report(ErrorCode.FORBIDDEN, why + more, {"capability": cap})

    def serve(self, coro: Any) -> None:
        """Run `coro` (an answer, a publish) as a task that `pending()` counts."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve_invoke(self) -> None:
        calls = self._receive(
            CapInvoke, lambda exc, ev: CapResult(CapCode.INVALID_PARAMS, error=str(exc))
        )
        async for call, req in calls:
            self.serve(self._invoke(call, req))

    def _receive(
        self, cls: type[P], answer: Callable[[LoomdError, Event], _Payload] | None = None
    ) -> Inbox[P]:
        """`cls`'s messages; a malformed one is reported (and answered, if `answer`)."""

        def report(ev: Event, exc: LoomdError) -> None:
            where = {"topic": ev.topic, "sender": ev.sender}
            text = f"agents: bad {ev.topic} payload from {ev.sender or '?'}: {exc}"
            self._report(ErrorCode.BAD_PAYLOAD, text, where)

        return Inbox(self.bus, cls, report, qos=QoS.RELIABLE, answer=answer)

    async def _invoke(self, call: CapInvoke, req: Event) -> None:
        if not self.intake:
            r = CapResult(CapCode.PROVIDER_UNAVAILABLE, error="loomd is stopping")
        else:
            timeout = call.timeout or self.settings().call_timeout_s
            r = await self.broker.call(
                call.cap, call.params, timeout=timeout, idempotency_key=call.key,
                caller=req.caller or UNKNOWN_CALLER,  # None: replayed, nobody vouches
            )  # fmt: skip
            if r.code == CapCode.FORBIDDEN:
                self.forbidden(r.error, call.cap)
        if req.reply_to:
            await self.bus.reply(req, r.to_payload(), wait=False, type=r.TYPE)

    async def _serve_grant(self) -> None:
        asks = self._receive(CapGrantAsk, lambda exc, ev: CapGrant(CapCode.INVALID_PARAMS))
        async for ask, req in asks:
            if req.reply_to:
                self.serve(self._grant(ask, req).respond(self.bus, req))

    def _grant(self, ask: CapGrantAsk, req: Event) -> CapGrant:
        """A one-hop grant: given on the checks a call through the broker gets (the call's
        own params and deadline are the provider's to check), for an SDK provider with an
        endpoint. A refusal is not reported here: the caller then calls through the broker,
        which refuses, counts and reports it as before."""
        ttl = self.settings().grant_ttl_s
        entry = self.broker.admit(ask.cap, req.caller or UNKNOWN_CALLER)
        if isinstance(entry, CapResult):
            return CapGrant(entry.code, error=entry.error)
        prov = entry.provider
        if (
            not self.intake
            or not ttl
            or not isinstance(prov, RemoteProvider)
            or not prov.endpoint
            or prov.dead.done()
        ):
            # no one-hop path: through the broker, and the caller asks again this much later
            return CapGrant(CapCode.OK, entry.spec.full, prov.id, ttl_s=ttl or NO_GRANT_RECHECK_S)
        ident = (req.caller or UNKNOWN_CALLER).identity
        who = ident.label
        uid = ident.uid if ident.kind is IdentityKind.UNIX else -1  # the kernel's word on it
        expires = round(time.time() + ttl, 6)
        mac = grant_mac(prov.grant_key, entry.spec.full, prov.id, who, uid, expires)
        full = entry.spec.full
        return CapGrant(CapCode.OK, full, prov.id, prov.endpoint, who, expires, mac, ttl, uid=uid)

    async def _serve_list(self) -> None:
        async with self.bus.subscribe(Topic.CAPS_LIST, QoS.RELIABLE) as sub:
            async for req in sub:
                if req.reply_to:
                    caps = CapsList(tuple(CapInfo.from_payload(c) for c in self.broker.list()))
                    await caps.respond(self.bus, req)

    async def _serve_barrier(self) -> None:
        arrivals = self._receive(
            BarrierRequest, lambda exc, ev: BarrierReply(False, error=str(exc))
        )
        async for arrive, req in arrivals:
            self._arrive(arrive, req)

    def _arrive(self, arrive: BarrierRequest, req: Event) -> None:
        name = arrive.name
        b = self.barriers.get(name)
        if b is None:
            b = self.barriers[name] = _Barrier(arrive.n, [])
            timeout = arrive.timeout or 10.0
            b.timer = asyncio.get_running_loop().call_later(timeout, self._expire, name, b)
        b.waiting.append(req)
        if len(b.waiting) >= b.n:
            del self.barriers[name]
            if b.timer:
                b.timer.cancel()
            for r in b.waiting:
                self.serve(BarrierReply(True, len(b.waiting)).respond(self.bus, r))

    def _expire(self, name: str, b: _Barrier) -> None:
        if self.barriers.get(name) is b:
            del self.barriers[name]
        for r in b.waiting:
            msg = f"{len(b.waiting)} of {b.n} arrived before the timeout"
            self.serve(BarrierReply(False, error=msg).respond(self.bus, r))

    async def _serve_register(self) -> None:
        regs = self._receive(CapsRegister, lambda exc, ev: CapsRegistered(False, error=str(exc)))
        async for p, req in regs:
            await self._register(p, req).respond(self.bus, req)

    async def _serve_unregister(self) -> None:
        async for gone, _ev in self._receive(CapsUnregister):
            prov = self.providers.get(gone.provider)
            if prov is not None and prov.token == gone.token:
                del self.providers[prov.id]
                self._drop(prov, "unregistered")

    def _register(self, p: CapsRegister, req: Event) -> CapsRegistered:
        pid = p.provider
        who = req.caller.identity if req.caller is not None else None
        old = self.providers.get(pid)
        if old is not None and old.owner != who:
            # a provider id is its registrant's: another client may not take it over (and
            # with it the calls of every capability it offers)
            self._report(
                ErrorCode.FORBIDDEN,
                f"provider {pid} is registered by {old.owner}; {who} may not replace it",
                {"provider": pid},
            )
            return CapsRegistered(False, error=f"forbidden: provider {pid} belongs to another")
        if old is not None:
            del self.providers[pid]
            self._drop(old, "registered again")
        if self._mux is None:
            self._mux = ReplyMux(self.bus)
        # An in-daemon provider (a component over LocalBus, or an MCP server's handle, which
        # the daemon makes) cannot die apart from the daemon and unregisters when it stops:
        # a long lease, not a heartbeat every 100 ms.
        local = who is not None and who.kind in (IdentityKind.DAEMON, IdentityKind.MCP)
        lease = IN_PROCESS_LEASE_S if local else self.settings().provider_lease_s
        prov = RemoteProvider(pid, self._mux, lease)
        prov.owner = who
        prov.token = p.token
        if p.endpoint.startswith(IN_PROCESS):  # honoured from inside the daemon only
            prov.local = in_process_broker(p.endpoint) if local else None
        elif p.endpoint and self.settings().grant_ttl_s:
            prov.endpoint = p.endpoint
            prov.grant_key = os.urandom(32)
        self.providers[pid] = prov
        done, refused = [], {}
        for d in p.caps:
            try:
                spec = CapabilitySpec.from_dict(d)
                self.broker.register(spec, prov)
                done.append(spec.full)
            except (LoomdError, ValueError, KeyError, TypeError) as exc:
                refused[str(d.get("name") if isinstance(d, dict) else d)] = str(exc)
                self._report(
                    ErrorCode.CAPABILITY_REFUSED, f"provider {pid}: {exc}", {"provider": pid}
                )
        self.log.info("SDK provider %s registered %s", pid, ", ".join(done) or "nothing")
        return CapsRegistered(
            True, tuple(done), refused, prov.lease_s, grant_key=prov.grant_key.hex()
        )

    def _drop(self, prov: RemoteProvider, why: str) -> None:
        prov.die()
        gone = self.broker.unregister_provider(prov)
        self.log.info("SDK provider %s dropped (%s): %s", prov.id, why, ", ".join(gone) or "-")
        if prov.endpoint:  # callers holding grants: their one-hop calls to it end now
            self.serve(CapsGone(prov.id, why).publish(
                self.bus, f"{Topic.CAPS_GONE}.{prov.id}", qos=QoS.REALTIME, wait=False
            ))  # fmt: skip

    async def _watch_leases(self) -> None:
        async with self.bus.subscribe(LEASE_PATTERN, QoS.REALTIME) as sub:
            async for ev in sub:
                pid = ev.topic.rsplit(".", 1)[1]
                prov = self.providers.get(pid)
                if prov is not None:
                    prov.seen = time.monotonic()
                    if CapsLease.is_type(ev.type) and ev.payload is not None:
                        self._account(prov, ev)
                else:  # a provider we do not know (the daemon restarted): ask it again
                    await self.bus.publish(
                        f"caps.reregister.{pid}", None, qos=QoS.REALTIME, wait=False
                    )

    def _account(self, prov: RemoteProvider, ev: Event) -> None:
        """The one-hop calls `prov` served since its last renewal, into the broker's counts."""
        try:
            lease = CapsLease.from_event(ev)
        except LoomdError:
            return
        for cap, codes in lease.calls.items():
            for code, n in codes.items():
                if code in CapCode.__members__.values():
                    self.broker.account(cap, code, n, prov)

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings().provider_lease_s / 5)
            now = time.monotonic()
            for pid, prov in list(self.providers.items()):
                if now - prov.seen > prov.lease_s:
                    del self.providers[pid]
                    self._drop(prov, f"no lease renewal for {prov.lease_s:g} s")

    async def _sweep_idempotency(self) -> None:
        while True:
            n = await self.broker.sweep_idempotency()
            if n:
                self.log.info("dropped %d expired idempotency records", n)
            await asyncio.sleep(min(3600.0, self.settings().idempotency_ttl_s))
