"""One-hop capability calls (loomd/agents/direct.py) against a real daemon: a granted call
goes straight to the provider and is still accounted by the broker; the provider refuses
a call without a valid grant (forged, expired, for another capability, none); a caller the
ACL does not allow is refused and nothing runs; the deadline holds; a provider that stops
answering mid-call (lease gone) ends the call `provider_unavailable` as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import cbor2
import pytest
import uvloop

from loomd.agents import capability
from loomd.agents.broker import ActionBroker
from loomd.agents.capability import specs_of
from loomd.agents.sdk import sdk_ctx, serve_capabilities, spec_list
from loomd.messages import CapCode, CapDirectCall, CapGrant, CapGrantAsk, CapResult
from loomd.sdk import Client
from loomd.sdk.direct import MAX_REQUEST_BYTES, DirectLink, Gone, Unreachable
from tests.agents.test_daemon import _caps, _wait_cap, slow_call_started
from tests.conftest import LoomdProcess

HERE = Path(__file__).parent
REPO = HERE.parents[1]
RUNS: dict[str, int] = {"open": 0, "secret": 0}


@capability("hop.open")
def hop_open(n: int = 0) -> int:
    RUNS["open"] += 1
    return n + 1


@capability("hop.secret")
def hop_secret() -> str:
    RUNS["secret"] += 1
    return "secret"


@capability("hop.nap")
async def hop_nap(secs: float) -> str:
    await asyncio.sleep(secs)
    return "rested"


def _provider() -> ActionBroker:
    return spec_list(specs_of(sys.modules[__name__]))


@contextlib.asynccontextmanager
async def _served(d: LoomdProcess) -> AsyncIterator[Client]:
    """The hop.* capabilities served by an SDK provider (in this process), and a caller."""
    RUNS.update(open=0, secret=0)
    async with (
        Client(d.endpoint, name="prov") as p,
        serve_capabilities(p, "hopprov", _provider()),
        Client(d.endpoint, name="caller") as c,
    ):
        await _wait_cap(c, "hop.secret@1")
        yield c


def _run(
    root: Path, main: Callable[[LoomdProcess], Awaitable[None]], extra: str = "", ttl: float = 2.0
) -> None:
    d = _daemon(root, extra, ttl)
    d.start()
    try:
        uvloop.run(main(d))
    finally:
        d.close()


async def _grant(c: Client, cap: str) -> CapGrant:
    ev = await c.request(CapGrantAsk.TOPIC, CapGrantAsk(cap).to_payload(), type=CapGrantAsk.TYPE)
    return CapGrant.from_payload(ev.payload)


async def _raw(endpoint: str, call: CapDirectCall) -> CapResult:
    link = DirectLink(endpoint)
    try:
        async with asyncio.timeout(5):
            raw = await link.request(cbor2.dumps(call.to_payload()))
        return CapResult.from_payload(cbor2.loads(raw))
    finally:
        link.close()


def _daemon(root: Path, extra: str = "", ttl: float = 2.0) -> LoomdProcess:
    toml = (
        f"[agents]\nentry_points = false\nprovider_lease_s = 0.3\ngrant_ttl_s = {ttl}\n"
        f"[home]\nenabled = false\n{extra}"
    )
    return LoomdProcess(root, toml)


def test_a_granted_call_goes_straight_to_the_provider_and_is_counted(short_tmp: Path) -> None:
    async def main(d: LoomdProcess) -> None:
        async with _served(d) as c:
            g = await _grant(c, "hop.open")
            assert g.direct and g.cap == "hop.open@1" and g.provider == "hopprov"
            assert g.endpoint.startswith("ipc://@") and g.expires > time.time()
            ctx = sdk_ctx(c, "caller")
            for i in range(20):
                assert await ctx.call("hop.open", n=i) == i + 1
            assert RUNS["open"] == 20
            # none of them went through the broker's provider topic...
            stats = await c.stats()
            via_broker = [s for s in stats.subscriptions if s.pattern == "caps.call.hopprov"]
            assert via_broker and all(s.delivered == 0 for s in via_broker), via_broker
            # ...and the broker counts them (the provider's lease renewals report them)
            async with asyncio.timeout(5):
                while (await _caps(c))["hop.open@1"]["calls"] < 20:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # many at once, over the one link, each answered to its own caller
            many = await asyncio.gather(*(ctx.call("hop.open", n=i) for i in range(100)))
            assert many == [i + 1 for i in range(100)]
            # the params are still checked (by the provider, against the schema)
            bad = await ctx.try_call("hop.open", {"n": "x"})
            assert bad.code == CapCode.INVALID_PARAMS, bad
            # an idempotency key goes through the broker, as before
            assert await ctx.call("hop.open", n=1, idempotency_key="k1") == 2

    _run(short_tmp, main)


def test_a_grant_in_use_is_renewed_and_the_calls_stay_one_hop(short_tmp: Path) -> None:
    async def main(d: LoomdProcess) -> None:
        async with _served(d) as c:
            ctx = sdk_ctx(c, "caller")
            assert await ctx.call("hop.open", n=0) == 1
            first = await c.stats()
            asks0 = sum(s.delivered for s in first.subscriptions if s.pattern == "caps.grant")
            ends = time.monotonic() + 1.5  # grants of 0.6 s: at least two renewals
            n = 0
            while time.monotonic() < ends:
                assert await ctx.call("hop.open", n=n) == n + 1
                n += 1
                await asyncio.sleep(0.005)
            stats = await c.stats()
            asks = sum(s.delivered for s in stats.subscriptions if s.pattern == "caps.grant")
            assert asks - asks0 >= 2, (asks0, asks)
            via_broker = [s for s in stats.subscriptions if s.pattern == "caps.call.hopprov"]
            assert sum(s.delivered for s in via_broker) == 0, via_broker  # all one-hop

    _run(short_tmp, main, ttl=0.6)


def test_with_grants_off_every_call_goes_through_the_broker(short_tmp: Path) -> None:
    async def main(d: LoomdProcess) -> None:
        async with _served(d) as c:
            g = await _grant(c, "hop.open")
            assert g.code == CapCode.OK and not g.direct and g.ttl_s > 0
            ctx = sdk_ctx(c, "caller")
            calls = await asyncio.gather(*(ctx.call("hop.open", n=i) for i in range(10)))
            assert calls == [i + 1 for i in range(10)]
            stats = await c.stats()
            via_broker = [s for s in stats.subscriptions if s.pattern == "caps.call.hopprov"]
            assert sum(s.delivered for s in via_broker) == 10, via_broker

    _run(short_tmp, main, ttl=0.0)


def test_the_provider_refuses_a_call_without_a_valid_grant(short_tmp: Path) -> None:
    async def main(d: LoomdProcess) -> None:
        async with _served(d) as c:
            g = await _grant(c, "hop.open")
            assert g.direct
            good = CapDirectCall(g.cap, {"n": 1}, 5.0, g.caller, g.expires, g.mac, g.uid)
            assert (await _raw(g.endpoint, good)).value == 2
            tries = {
                "no grant": CapDirectCall("hop.secret@1", {}, 5.0),
                "forged": CapDirectCall(
                    "hop.secret@1", {}, 5.0, g.caller, g.expires, "00" * 32, g.uid
                ),
                "other cap": CapDirectCall(
                    "hop.secret@1", {}, 5.0, g.caller, g.expires, g.mac, g.uid
                ),
                "other caller": CapDirectCall(g.cap, {}, 5.0, "uid:0", g.expires, g.mac, g.uid),
                "other uid": CapDirectCall(g.cap, {}, 5.0, g.caller, g.expires, g.mac, g.uid + 1),
                "any uid": CapDirectCall(g.cap, {}, 5.0, g.caller, g.expires, g.mac, -1),
                "longer": CapDirectCall(g.cap, {}, 5.0, g.caller, g.expires + 60, g.mac, g.uid),
                "expired": CapDirectCall(g.cap, {}, 5.0, g.caller, time.time() - 1, g.mac, g.uid),
            }
            for what, call in tries.items():
                r = await _raw(g.endpoint, call)
                assert r.code == CapCode.FORBIDDEN, (what, r)
            # a well-signed grant that has run out (the broker's own, a TTL later)
            await asyncio.sleep(max(0.0, g.expires - time.time()) + 0.05)
            late = await _raw(g.endpoint, good)
            assert late.code == CapCode.FORBIDDEN and "expired" in late.error, late
            # garbage is answered, not fatal
            link = DirectLink(g.endpoint)
            junk = CapResult.from_payload(cbor2.loads(await link.request(b"\xff\x00junk")))
            link.close()
            assert junk.code == CapCode.INVALID_PARAMS
            # nobody there: unreachable (nothing sent; the caller goes through the broker)
            with pytest.raises(Unreachable):
                await DirectLink(g.endpoint + "-none").request(b"x")
            # a frame over the limit: that connection is cut, the provider serves on
            big = DirectLink(g.endpoint)
            with pytest.raises(Gone):
                await big.request(b"\0" * (MAX_REQUEST_BYTES + 1))
            assert RUNS == {"open": 1, "secret": 0}
            # a caller that uses the SDK still gets there: new grant, one hop
            assert await sdk_ctx(c, "caller").call("hop.open", n=5) == 6

    _run(short_tmp, main)


def test_the_deadline_holds_and_a_provider_gone_silent_ends_the_call(short_tmp: Path) -> None:
    async def main(d: LoomdProcess) -> None:
        script = str(HERE / "sdk_provider.py")
        child = subprocess.Popen([sys.executable, script, d.endpoint])  # noqa: ASYNC220
        try:
            async with Client(d.endpoint, name="caller") as c:
                await _wait_cap(c, "slow.sleep@1")
                assert (await _grant(c, "slow.sleep")).direct
                ctx = sdk_ctx(c, "caller")
                began = time.monotonic()
                r = await ctx.try_call("slow.sleep", {"secs": 5}, timeout=0.3)
                took = time.monotonic() - began
                assert r.code == CapCode.TIMEOUT and "within 0.3 s" in r.error, r
                assert 0.29 <= took < 2.0, took
                # the provider stops (no disconnect, no lease renewals): the broker drops it
                # when its lease runs out and the one-hop call ends then, not at its deadline
                call = await slow_call_started(c, ctx)
                began = time.monotonic()
                os.kill(child.pid, signal.SIGSTOP)
                r = await call
                took = time.monotonic() - began
                assert r.code == CapCode.PROVIDER_UNAVAILABLE, r
                assert took < 3.0, f"took {took:.2f} s (lease 0.3 s, call timeout 20 s)"
                r2 = await ctx.try_call("sdk.echo", {"text": "x"})
                assert r2.code == CapCode.PROVIDER_UNAVAILABLE, r2
        finally:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(10)

    _run(short_tmp, main)


GUEST = """
import asyncio, json, sys
import cbor2
from loomd.agents.sdk import sdk_ctx
from loomd.messages import CapDirectCall, CapGrant, CapGrantAsk, CapResult
from loomd.sdk import connect
from loomd.sdk.direct import MAX_REQUEST_BYTES, DirectLink, Gone, Unreachable
from tests.bus.test_acl_identities import drop_to_nobody

drop_to_nobody()

async def main():
    out = {}
    async with connect(sys.argv[1], name="guest") as bus:
        ctx = sdk_ctx(bus, "guest")
        for cap in ("hop.open", "hop.secret"):
            ev = await bus.request(CapGrantAsk.TOPIC, CapGrantAsk(cap).to_payload(),
                                   type=CapGrantAsk.TYPE)
            g = CapGrant.from_payload(ev.payload)
            out["grant " + cap] = g.code
            out["call " + cap] = (await ctx.try_call(cap, {})).code
            if cap == "hop.open":
                opened = g
        # the endpoint and grant of hop.open, used for hop.secret: the provider says no
        link = DirectLink(opened.endpoint)
        g = opened
        call = CapDirectCall("hop.secret@1", {}, 5.0, g.caller, g.expires, g.mac, g.uid)
        raw = await link.request(cbor2.dumps(call.to_payload()))
        out["direct hop.secret"] = CapResult.from_payload(cbor2.loads(raw)).code
        # root's own grant for hop.secret (valid, signed), used from this uid: no
        g = CapGrant.from_payload(json.loads(sys.argv[2]))
        call = CapDirectCall(g.cap, {}, 5.0, g.caller, g.expires, g.mac, g.uid)
        raw = await link.request(cbor2.dumps(call.to_payload()))
        answer = CapResult.from_payload(cbor2.loads(raw))
        out["root's grant"] = [answer.code, answer.error]
        link.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as another uid")
def test_a_caller_the_acl_does_not_allow_is_refused_and_nothing_runs(short_tmp: Path) -> None:
    os.chmod(short_tmp, 0o755)
    rules = '[bus]\nsocket_mode = "0666"\n[[acl]]\nidentity = ["uid:65534"]\ncall = ["hop.open"]\n'

    async def main(d: LoomdProcess) -> None:
        async with _served(d) as c:
            os.chmod(d.root / "run", 0o755)
            script = d.root / "guest.py"
            script.write_text(GUEST)
            rootgrant = await _grant(c, "hop.secret")  # root may: a valid grant, uid 0
            assert rootgrant.direct and rootgrant.uid == 0
            r = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(script), d.endpoint, json.dumps(rootgrant.to_payload())],
                capture_output=True, text=True, timeout=60, cwd=str(REPO),
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout.strip().splitlines()[-1])
            assert out["grant hop.open"] == "ok" and out["call hop.open"] == "ok", out
            assert out["grant hop.secret"] == "forbidden", out
            assert out["call hop.secret"] == "forbidden", out
            assert out["direct hop.secret"] == "forbidden", out
            code, error = out["root's grant"]  # a valid grant, from another uid
            assert code == "forbidden" and "uid 0's, the caller is uid 65534" in error, out
            assert RUNS == {"open": 1, "secret": 0}
            # the broker's refusal is still counted and reported as before
            assert (await _caps(c))["hop.secret@1"]["calls"] == 0

    _run(short_tmp, main, rules)
