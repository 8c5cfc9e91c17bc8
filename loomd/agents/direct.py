"""One-hop capability calls: the broker grants, the caller calls the provider straight.

    caller --caps.grant--> broker          (once per capability per grant TTL: the ACL check)
    caller --CapDirectCall--> provider     (every call: one socket hop each way)

The broker (`CapabilityService`) answers a `CapGrantAsk` after the same checks a call
through it gets (the capability resolves, the caller may call it: `allowed_callers`, the
ACL, `sensitive`) with a grant: the capability, the provider, the caller's identity, an
expiry, and an HMAC-SHA256 over those with a key only the broker and that provider hold
(made at registration, sent in the provider's `CapsRegistered`). The provider runs a
`CapDirectCall` only if the HMAC checks out, the grant names this capability and has not
expired (`GrantCheck`): talking to the provider's socket without the broker gets
`forbidden`. Deadlines: the caller's, and the provider runs the call under the same timeout.
A provider that disconnects mid-call, or that the broker drops (its lease ran out:
`caps.gone.<provider>`), ends the caller's calls `provider_unavailable`. Calls with an
idempotency key, and every call the broker did not grant, go through the broker as before.
The provider reports what it served in its lease renewals (`CapsLease`), so the broker's
counts stay whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections import defaultdict
from typing import Any

import cbor2

from loomd.agents.broker import ActionBroker
from loomd.bus import cbor
from loomd.bus.envelope import QoS
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    CapCode,
    CapDirectCall,
    CapGrant,
    CapGrantAsk,
    CapResult,
    CapsGone,
    Topic,
)
from loomd.sdk.direct import DirectLink, DirectServer, Gone, Unreachable

__all__ = [
    "IN_PROCESS",
    "DirectCaller",
    "GrantCheck",
    "ProviderServer",
    "end_reader",
    "grant_mac",
    "in_process_broker",
    "offer_in_process",
    "withdraw_in_process",
]

log = logging.getLogger("loomd.agents.direct")

GRANT_ASK_S = 5.0  # how long a caller waits for the broker's grant
GRANT_MARGIN_S = 0.05  # a grant this close to its expiry is asked again, not used
RENEW_AHEAD = 0.25  # in the last quarter of its life a grant in use is renewed in the background
NO_GRANTS_S = 60.0  # a daemon that does not answer caps.grant is asked again this much later
GOOD_GRANTS = 1024  # grants a provider remembers as checked (then it forgets them all)
IN_PROCESS = "inproc://loomd-direct-"  # the endpoint of a provider inside the daemon

_in_process: dict[str, ActionBroker] = {}  # endpoint -> that provider's own broker


def offer_in_process(broker: ActionBroker) -> str:
    """An endpoint for a provider inside the daemon (a component or an MCP server over
    `LocalBus`): the agents' broker then runs its calls on `broker` straight, in process,
    instead of a bus request and a bus reply each way. The endpoint is unguessable and the
    agents honour it only in a registration from inside the daemon (its identity)."""
    endpoint = IN_PROCESS + os.urandom(16).hex()
    _in_process[endpoint] = broker
    return endpoint


def withdraw_in_process(endpoint: str) -> None:
    _in_process.pop(endpoint, None)


def in_process_broker(endpoint: str) -> ActionBroker | None:
    return _in_process.get(endpoint)


def grant_mac(key: bytes, cap: str, provider: str, caller: str, uid: int, expires: float) -> str:
    """The grant's HMAC: what the broker signs and the provider checks."""
    msg = "\0".join((cap, provider, caller, str(uid), f"{expires:.6f}")).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


class GrantCheck:
    """The provider's side of a grant: is this call one the broker allowed?"""

    def __init__(self, provider: str, key: bytes) -> None:
        self.provider = provider
        self.key = key
        # grants that checked out: a caller sends one grant with every call until it expires
        self._good: dict[str, tuple[str, str, int, float]] = {}  # mac -> what it signed

    def refusal(self, call: CapDirectCall, uid: int = -1, now: float | None = None) -> str | None:
        """Why `call` (from a process of `uid`) may not run, or None if its grant checks out."""
        if not self.key:
            return "this provider takes no one-hop calls"
        if not call.mac:
            return "no grant"
        signed = (call.cap, call.caller, call.uid, float(call.expires))
        if self._good.get(call.mac) != signed:
            want = grant_mac(
                self.key, call.cap, self.provider, call.caller, call.uid, float(call.expires)
            )
            if not hmac.compare_digest(want, call.mac):
                return "the grant does not check out"
            if len(self._good) >= GOOD_GRANTS:
                self._good.clear()
            self._good[call.mac] = signed
        if call.expires <= (time.time() if now is None else now):
            return "the grant has expired"
        if call.uid >= 0 and uid != call.uid:
            return f"the grant is uid {call.uid}'s, the caller is uid {uid}"
        return None


class ProviderServer:
    """A provider's one-hop endpoint: runs granted `CapDirectCall`s on its local broker and
    counts them by capability and code for the lease renewals."""

    def __init__(self, provider: str, broker: ActionBroker) -> None:
        self.provider = provider
        self.broker = broker
        self.check = GrantCheck(provider, b"")
        self.refused = 0
        self._counts: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.server = DirectServer(self._handle, self._busy, name=provider)

    async def start(self) -> str:
        return await self.server.start()

    def set_key(self, key_hex: str) -> None:
        """The key of the registration in force (a new registration makes a new key, and
        the grants of the old one stop checking out)."""
        self.check = GrantCheck(self.provider, bytes.fromhex(key_hex) if key_hex else b"")

    def take_counts(self) -> dict[str, dict[str, int]]:
        """What was served since the last call, for `CapsLease`."""
        out = {cap: dict(codes) for cap, codes in self._counts.items()}
        self._counts.clear()
        return out

    async def close(self) -> None:
        await self.server.close()

    def _refuse(self, code: CapCode, error: str, uid: int) -> bytes:
        """A refused one-hop call, logged (the first, then every 1000th: a caller looping on
        a stale grant must not flood the log)."""
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("one-hop call from uid %d refused: %s (%d refused so far)",
                        uid, error, self.refused)  # fmt: skip
        return self._answer(CapResult(code, error=error, provider=self.provider))

    def _answer(self, r: CapResult) -> bytes:
        return cbor2.dumps(r.to_payload())

    def _busy(self, body: bytes) -> bytes:
        return self._answer(
            CapResult(CapCode.PROVIDER_UNAVAILABLE, error="provider busy", provider=self.provider)
        )

    async def _handle(self, body: bytes, uid: int) -> bytes:
        try:
            call = CapDirectCall.from_payload(cbor.loads(body, cbor.BODY, "one-hop call"))
        except LoomdError as exc:
            return self._refuse(CapCode.INVALID_PARAMS, f"malformed call: {exc}", uid)
        why = self.check.refusal(call, uid)
        if why is None and self.broker.resolve(call.cap) is None:
            why = f"no capability {call.cap!r} here"
        if why is not None:
            return self._refuse(
                CapCode.FORBIDDEN, f"{call.caller or '?'} may not call {call.cap} here: {why}", uid
            )
        r = await self.broker.call(call.cap, call.params, timeout=call.timeout or 10.0)
        self._counts[call.cap][r.code] += 1
        return self._answer(CapResult(r.code, r.value, r.error, self.provider))


class DirectCaller:
    """A caller's one-hop calls: grants cached per capability name until they expire,
    one `DirectLink` per provider endpoint, and the broker's `caps.gone.*` watched while
    links are open. `call` returns None when the call is to go through the broker."""

    def __init__(self, bus: Any, mux: Any) -> None:
        self._bus = bus
        self._mux = mux  # the backend's ReplyMux: the grant request shares its subscription
        self._grants: dict[str, tuple[CapGrant | None, float]] = {}  # name -> (grant, until)
        self._links: dict[str, DirectLink] = {}  # endpoint -> link
        self._by_provider: dict[str, set[str]] = defaultdict(set)  # provider -> endpoints
        self._gone_sub: Any = None
        self._gone_task: asyncio.Task[None] | None = None
        self._asking: dict[str, asyncio.Future[CapGrant | None]] = {}
        self._checked = False  # whether the daemon answers caps.grant at all
        self._no_grants_until = 0.0
        self.inflight = 0

    async def call(self, name: str, params: dict[str, Any], timeout: float) -> CapResult | None:
        grant = await self._grant(name, timeout)
        if grant is None:
            return None
        link = self._link(grant)
        body = cbor2.dumps(
            CapDirectCall(
                grant.cap, params, timeout, grant.caller, grant.expires, grant.mac, grant.uid
            ).to_payload()
        )  # fmt: skip
        self.inflight += 1
        try:
            async with asyncio.timeout(timeout):
                raw = await link.request(body)
        except TimeoutError:
            return CapResult(
                CapCode.TIMEOUT, error=f"{grant.cap} gave no result within {timeout:g} s",
                provider=grant.provider,
            )  # fmt: skip
        except Unreachable:  # nothing was sent (a stale endpoint): the broker decides
            self._forget(grant.provider)
            return None
        except Gone:
            self._forget(grant.provider)
            return CapResult(
                CapCode.PROVIDER_UNAVAILABLE,
                error=f"provider {grant.provider} went away during the call",
                provider=grant.provider,
            )
        finally:
            self.inflight -= 1
        try:
            r = CapResult.from_payload(cbor.loads(raw, cbor.BODY, "one-hop answer"))
        except LoomdError:
            r = CapResult(CapCode.ERROR, error=f"malformed answer from {grant.provider}")
        if r.code == CapCode.FORBIDDEN:
            # The provider no longer takes this grant (it registered again, with a new key):
            # the broker decides, and the next call asks for a new grant.
            self._grants.pop(name, None)
            return None
        return r

    async def _grant(self, name: str, timeout: float) -> CapGrant | None:
        now = time.monotonic()
        kept = self._grants.get(name)
        if kept is not None and now < kept[1]:
            if kept[0] is not None and now > kept[1] - kept[0].ttl_s * RENEW_AHEAD:
                self._asking_for(name, GRANT_ASK_S)  # renewed beside the calls, not before one
            return kept[0]
        return await asyncio.shield(self._asking_for(name, timeout))

    def _asking_for(self, name: str, timeout: float) -> asyncio.Future[CapGrant | None]:
        """The ask in flight for `name`, or a new one: concurrent calls share one ask."""
        asking = self._asking.get(name)
        if asking is None:
            asking = self._asking[name] = asyncio.ensure_future(self._ask(name, timeout))
            asking.add_done_callback(lambda f: self._asked(name, f))
        return asking

    def _asked(self, name: str, f: asyncio.Future[CapGrant | None]) -> None:
        self._asking.pop(name, None)
        if not f.cancelled() and f.exception() is not None:  # retrieved: a renewal's own
            log.warning("one-hop grant for %s: %s", name, f.exception())

    async def _ask(self, name: str, timeout: float) -> CapGrant | None:
        now = time.monotonic()
        if now < self._no_grants_until:
            return None
        if not self._checked:  # a daemon without one-hop grants: never wait for one
            self._checked = True
            with contextlib.suppress(LoomdError, AttributeError):
                if not await self._bus.listeners(Topic.CAPS_GRANT):
                    self._no_grants_until = now + NO_GRANTS_S
                    self._checked = False
                    return None
        try:
            reply = await self._mux.request(
                Topic.CAPS_GRANT, CapGrantAsk(name).to_payload(), min(GRANT_ASK_S, timeout),
                CapGrantAsk.TYPE,
            )  # fmt: skip
            grant = CapGrant.from_payload(reply.payload)
        except (RequestTimeout, LoomdError):
            return None  # the broker path answers (and its deadline is the call's)
        if grant.code != CapCode.OK:  # refused (a renewal too: the ACL changed, say):
            self._grants.pop(name, None)  # the broker path refuses (and reports) it again
            return None
        if not grant.direct:  # through the broker; asked again after ttl_s
            if grant.ttl_s > 0:
                self._grants[name] = (None, now + grant.ttl_s)
            return None
        ttl = min(grant.ttl_s, grant.expires - time.time()) - GRANT_MARGIN_S
        if ttl <= 0:
            return None
        self._grants[name] = (grant, now + ttl)
        await self._watch_gone()
        return grant

    def _link(self, grant: CapGrant) -> DirectLink:
        link = self._links.get(grant.endpoint)
        if link is None or link.closed:
            link = self._links[grant.endpoint] = DirectLink(grant.endpoint)
            self._by_provider[grant.provider].add(grant.endpoint)
        return link

    def _forget(self, provider: str) -> None:
        """`provider` is gone: its links close (their calls end `provider_unavailable`)
        and its grants are dropped."""
        for ep in self._by_provider.pop(provider, ()):
            link = self._links.pop(ep, None)
            if link is not None:
                link.close(f"provider {provider} is gone")
        for name, (g, _) in list(self._grants.items()):
            if g is not None and g.provider == provider:
                del self._grants[name]

    async def _watch_gone(self) -> None:
        if self._gone_sub is not None:
            return
        sub = self._bus.subscribe(f"{Topic.CAPS_GONE}.*", QoS.REALTIME)
        self._gone_sub = sub
        with contextlib.suppress(LoomdError, TimeoutError):
            async with asyncio.timeout(GRANT_ASK_S):
                await sub.ready()
        self._gone_task = asyncio.ensure_future(self._gone(sub))

    async def _gone(self, sub: Any) -> None:
        try:
            async for ev in sub:
                try:
                    gone = CapsGone.from_event(ev)
                except LoomdError:
                    continue
                self._forget(gone.provider)
        finally:  # the client closed (its subscriptions end), or we did: so do the links
            self._close_links()

    def _close_links(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._by_provider.clear()
        self._grants.clear()

    async def close(self) -> None:
        await end_reader(self._gone_task, self._gone_sub)
        self._gone_sub = self._gone_task = None
        self._close_links()


async def end_reader(task: asyncio.Task[None] | None, sub: Any) -> None:
    """Stop a task that reads subscription `sub`, then close the subscription."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if sub is not None:
        await sub.close()
