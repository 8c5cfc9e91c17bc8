"""loomd's Home Assistant WebSocket client against a real HA: the kitchen light in its
area among the exposed entities, its state changes as they happen, a service call that
switches it, a bad token refused with a clear error, and HA away failing fast."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.bus.local import LocalBus
from loomd.errors import LoomdError
from loomd.homeassistant.client import HaClient, HaStateChange
from loomd.messages import HaState
from tests.homeassistant.conftest import HaApi, HaTestbed, board, component, free_port, ha_section

# The first test to ask for `ha` pays a cold testbed build (~4 min) when none is cached.
pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(900)]


def test_areas_exposed_entities_states_and_services(ha: HaTestbed) -> None:
    async def scenario() -> None:
        client = HaClient(ha.url, ha.token)
        changes: asyncio.Queue[HaStateChange] = asyncio.Queue()

        async def on_state(change: HaStateChange) -> None:
            if change.entity_id == ha.light:
                changes.put_nowait(change)

        runner = asyncio.create_task(client.run(on_state))
        try:
            await asyncio.wait_for(client.connected.wait(), 15)
            snap = await client.snapshot()
            kitchen = next(a for a in snap.areas if a.name == "Kitchen")
            light = next(e for e in snap.entities if e.entity_id == ha.light)
            assert light.area_id == kitchen.id and light.name == "Kitchen Lights", light
            assert light.domain == "light"
            # only what HA exposes to voice assistants: the helper behind the light is not
            assert all(e.entity_id != "input_boolean.kitchen_lights_state" for e in snap.entities)
            await client.call_service("light", "turn_off", target={"entity_id": ha.light})
            await client.call_service("light", "turn_on", target={"entity_id": ha.light})
            async with asyncio.timeout(15):
                while (change := await changes.get()).state != "on":
                    pass
            assert change.old_state == "off" and change.at > 0
            with pytest.raises(LoomdError, match=r"not_found|Service"):
                await client.call_service("light", "no_such_service",
                                          target={"entity_id": ha.light})  # fmt: skip
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await client.close()

    asyncio.run(scenario())


def test_a_bad_token_and_ha_away_say_why(ha: HaTestbed) -> None:
    async def scenario() -> None:
        bad = HaClient(ha.url, "not-a-token")
        with pytest.raises(LoomdError, match="refused the token"):
            await bad.connect()
        await bad.close()
        away = HaClient(f"http://127.0.0.1:{free_port()}", ha.token, timeout_s=2)
        with pytest.raises(LoomdError, match="unreachable"):
            await away.connect()
        with pytest.raises(LoomdError, match="not connected"):
            await away.call_service("light", "turn_on", target={"entity_id": ha.light})
        await away.close()

    asyncio.run(scenario())


def test_the_component_publishes_ha_states_and_calls_services(
    ha: HaTestbed, tmp_path: Path
) -> None:
    """`[homeassistant] url` + `token_file`: HA's state changes arrive on the bus as
    `ha.state.<entity_id>` (typed `HaState`), `homeassistant.call` switches the light and
    `homeassistant.entities` lists it in its area (what `loomctl homeassistant ...` runs)."""
    token = tmp_path / "ha-token"
    token.write_text(ha.token + "\n")
    body = ha_section(free_port(), url=f'"{ha.url}"', token_file=f'"{token}"', mdns="false")

    async def scenario() -> tuple[HaState, dict[str, Any]]:
        async with board(
            tmp_path / "b", body, "ws-client", ("state", "bus", "homeassistant")
        ) as host:
            comp = component(host, "homeassistant")
            await asyncio.wait_for(comp.client.connected.wait(), 15)
            bus = LocalBus(host.services.broker, "test")  # type: ignore[arg-type]
            await host.services.call("homeassistant.call", "light.turn_off", ha.light)
            async with bus.subscribe(f"ha.state.{ha.light}") as sub:
                await sub.ready()
                await host.services.call("homeassistant.call", "light.turn_on", ha.light)
                async with asyncio.timeout(15):
                    while (st := HaState.from_payload((await sub.get()).payload)).state != "on":
                        pass
            listed = await host.services.call("homeassistant.entities")
            assert comp.status().ha_api == "connected"
            return st, listed

    st, listed = asyncio.run(scenario())
    assert st.entity_id == ha.light and st.old_state == "off"
    assert st.attributes.get("friendly_name") == "Kitchen Lights"
    light = next(e for e in listed["entities"] if e["entity_id"] == ha.light)
    assert listed["areas"][light["area"]] == "Kitchen"


def test_the_ha_token_from_a_systemd_credential(
    ha: HaTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`token_credential`: the token from $CREDENTIALS_DIRECTORY (LoadCredential=), no file."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ha-token").write_text(ha.token + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    body = ha_section(free_port(), url=f'"{ha.url}"', token_credential='"ha-token"',
                      mdns="false")  # fmt: skip

    async def scenario() -> str:
        async with board(
            tmp_path / "b", body, "ws-client", ("state", "bus", "homeassistant")
        ) as host:
            comp = component(host, "homeassistant")
            await asyncio.wait_for(comp.client.connected.wait(), 15)
            return str(comp.status().ha_api)

    assert asyncio.run(scenario()) == "connected"


def test_ha_services_as_broker_capabilities(ha: HaTestbed, tmp_path: Path) -> None:
    """The agents' action broker calls `homeassistant.turn_on` (offered over the bus by the
    homeassistant component): HA's kitchen light goes on; an unknown entity is an error
    the broker reports, not a crash."""
    token = tmp_path / "ha-token"
    token.write_text(ha.token)
    body = ha_section(free_port(), url=f'"{ha.url}"', token_file=f'"{token}"', mdns="false")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        names = ("state", "bus", "agents", "homeassistant")
        async with board(tmp_path / "b", body, "ws-caps", names) as host, HaApi(ha) as api:
            comp = component(host, "homeassistant")
            await asyncio.wait_for(comp.client.connected.wait(), 15)
            bus = LocalBus(host.services.broker, "test")  # type: ignore[arg-type]
            await api.post("/api/services/light/turn_off", {"entity_id": ha.light})

            async def invoke(cap: str, **params: Any) -> dict[str, Any]:
                end = asyncio.get_running_loop().time() + 15
                while True:  # the component registers its capabilities once it has started
                    ev = await bus.request("caps.invoke", {"cap": cap, "params": params},
                                           timeout=15)  # fmt: skip
                    waiting = ev.payload["code"] in ("provider_unavailable", "not_found")
                    if not waiting or asyncio.get_running_loop().time() > end:
                        return ev.payload  # type: ignore[no-any-return]
                    await asyncio.sleep(0.1)

            on = await invoke("homeassistant.turn_on", entity_id=ha.light)
            await api.wait_state(
                lambda s: any(x["entity_id"] == ha.light and x["state"] == "on" for x in s),
                "light",
            )
            state = await invoke("homeassistant.state", entity_id=ha.light)
            bad = await invoke("homeassistant.state", entity_id="light.nowhere")
            return on, state, bad

    on, state, bad = asyncio.run(scenario())
    assert on["code"] == "ok", on
    assert state["code"] == "ok" and state["value"]["state"] == "on", state
    assert bad["code"] == "error" and "no entity 'light.nowhere'" in bad["error"], bad
