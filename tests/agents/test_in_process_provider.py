"""In-daemon providers (the home component) keep their capabilities on a long lease, not a
heartbeat every 100 ms; and a provider id belongs to whoever registered it first."""

from __future__ import annotations

import asyncio

import uvloop

from loomd.bus.envelope import QoS
from loomd.messages import CapsList, CapsRegister, CapsRegistered, Topic
from loomd.sdk import connect
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
