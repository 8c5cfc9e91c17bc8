"""In-daemon providers (the home component) keep their capabilities on a long lease, not a
heartbeat every 100 ms; and a provider id belongs to whoever registered it first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from loomd.agents import direct
from loomd.agents.broker import CapabilityError
from loomd.agents.capability import CapabilitySpec
from loomd.agents.ctx import AgentCtx, LocalBackend
from loomd.agents.sdk import serve_capabilities, spec_list
from loomd.bus.acl import Manifest
from loomd.bus.envelope import QoS
from loomd.bus.identity import Identity
from loomd.bus.local import LocalBus
from loomd.errors import CallError
from loomd.messages import CapsList, CapsRegister, CapsRegistered, Topic
from loomd.sdk import connect
from tests.agents.helpers import running, wait_until
from tests.conftest import LoomdProcess


def test_home_lease_is_quiet_and_cannot_be_taken_over(daemon: LoomdProcess) -> None:
    async def main() -> None:
        async with connect(daemon.endpoint) as bus:
            for _ in range(100):  # the home registers (no devices: no capabilities) after READY
                st = (await bus.status())["status"]["components"]["agents"]["status"]
                if st["providers"] >= 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the home did not register as a provider")
            leases = bus.subscribe("caps.lease.home", QoS.REALTIME)
            await leases.ready()
            seen = 0
            try:
                async with asyncio.timeout(2.0):
                    while True:
                        await leases.get()
                        seen += 1
            except TimeoutError:
                pass
            assert seen <= 1, f"{seen} lease renewals in 2 s (was 20)"
            # another client may not register as `home` (it would take its calls)
            fake = CapsRegister("home", ({"name": "home.lock", "version": 9},), "t").to_payload()
            answer = CapsRegistered.from_event(await bus.request(Topic.CAPS_REGISTER, fake))
            assert not answer.ok and "forbidden" in answer.error
            caps = CapsList.from_event(await bus.request(Topic.CAPS_LIST, None)).caps
            assert all(c.provider == "home" for c in caps if c.name.startswith("home."))
            assert not any(c.name == "home.lock" and c.version == 9 for c in caps)

    uvloop.run(main())


def test_an_in_daemon_provider_is_called_straight_and_a_plugin_over_the_bus(tmp_path: Any) -> None:
    """A provider inside the daemon (a component, an MCP server: a daemon identity over
    `LocalBus`) is called on its own broker in process, no `caps.call.*` request on the bus;
    its answers and errors are the same; an in-process endpoint in another registrant's
    registration (a plugin's handle, an SDK client that copies one) is not honoured."""

    async def main() -> None:
        async with running(tmp_path) as (host, comp):
            bus = comp.ctx.bus
            assert isinstance(bus, LocalBus)
            await wait_until(lambda: bus.broker.listeners(Topic.CAPS_REGISTER) > 0)
            seen: list[str] = []
            watch = bus.subscribe("caps.call.#", QoS.RELIABLE)
            await watch.ready()

            async def note() -> None:
                async for ev in watch:
                    seen.append(ev.topic)

            watcher = asyncio.ensure_future(note())

            def add(a: int, b: int) -> int:
                return a + b

            def fail() -> None:
                raise CapabilityError("no luck")

            inside = spec_list([(CapabilitySpec("inside.add"), add),
                                (CapabilitySpec("inside.fail"), fail)])  # fmt: skip
            plugin = spec_list([(CapabilitySpec("plug.add"), add)])
            ctx = AgentCtx("t", bus, LocalBackend(comp.broker, host.services.state.kv))
            daemon_bus = LocalBus(bus.broker, "part", Identity.daemon("part"))
            plugin_bus = bus.as_plugin(
                "plug", Manifest(publish=("caps.#", "thread.#"), subscribe=("caps.#", "thread.#"))
            )
            async with (
                serve_capabilities(daemon_bus, "part", inside),
                serve_capabilities(plugin_bus, "plug", plugin),
            ):
                assert (await ctx.call("inside.add", a=2, b=3)) == 5
                with pytest.raises(CallError, match="capability_error: no luck"):
                    await ctx.call("inside.fail")
                assert seen == []  # straight: nothing went over the bus
                assert comp.service is not None
                assert comp.service.providers["part"].local is inside
                assert comp.service.providers["plug"].local is None
                assert (await ctx.call("plug.add", a=1, b=1)) == 2
                await wait_until(lambda: seen == ["caps.call.plug"], what="the plugin's call")
                # an SDK-like registrant copying the in-process endpoint gets the bus path
                endpoint = next(iter(direct._in_process))
                forged = CapsRegister("forger", ({"name": "forged.add"},), "t", endpoint)
                answer = CapsRegistered.from_event(
                    await plugin_bus.request(Topic.CAPS_REGISTER, forged.to_payload())
                )
                assert answer.ok and comp.service.providers["forger"].local is None
            assert direct._in_process == {}  # withdrawn when the provider stops
            watcher.cancel()
            await watch.close()

    uvloop.run(main())
