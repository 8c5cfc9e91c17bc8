"""HA's entities as the board's devices, with a real Home Assistant: its exposed template
light "Kitchen Lights" (area Kitchen, scripts/ha-testbed) joins the home registry, a spoken
"hey jarvis, turn on the kitchen lights" (Piper's voice, fed to the board's microphone
pipeline) in local mode (`[voice] agent = "assist"`, hassil) switches HA's light, a typed
`loomctl assist` turns it off, and HA's state comes back as the device's state. HA killed
mid-session: a clear status line and a turn that fails at once saying why; HA started
again: the board reconnects and the same command works."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import write_wav
from tests.conftest import LoomdProcess, loomctl, wait_until
from tests.homeassistant.conftest import CACHE, TESTBED, HaApi, HaTestbed, free_port

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(900)]
DEVICE = "light_kitchen_lights"  # the registry's id for HA's light.kitchen_lights


def board_toml(ha: HaTestbed, token: Path, **extra: str) -> str:
    """The homeassistant component in local mode with HA's WebSocket API, and the assist."""
    lines = [
        "[homeassistant]", "enabled = true", f"port = {free_port()}", "mdns = false",
        'mode = "local"', f'url = "{ha.url}"', f'token_file = "{token}"',
        *(f"{k} = {v}" for k, v in extra.items()),
        "[assist]", "enabled = true", "llm = false",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def home(d: LoomdProcess) -> dict[str, Any]:
    r = loomctl(d, "home", "--json")
    assert r.returncode == 0, r.stderr
    return {x["id"]: x for x in json.loads(r.stdout)["devices"]}


def ha_status(d: LoomdProcess) -> dict[str, Any]:
    r = loomctl(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["components"]["homeassistant"]["status"]  # type: ignore[no-any-return]


def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    """`check()`'s first truthy value, polled until a deadline."""
    return wait_until(check, timeout, what)


def assist(d: LoomdProcess, text: str) -> dict[str, Any]:
    r = loomctl(d, "assist", text, "--json", timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def ready(d: LoomdProcess) -> None:
    """HA's light is a device and the assist acts on it (the assist rebuilds its sentences
    when the home changes): "turn off" until it names the device (the light is off)."""
    until("HA's light in the registry", lambda: DEVICE in home(d))
    acts = lambda: DEVICE in json.dumps(assist(d, "turn off the kitchen lights")["actions"])  # noqa: E731
    until("the assist acts on HA's light", acts)


def light_state(ha: HaTestbed) -> str:
    async def get() -> str:
        async with HaApi(ha) as api:
            st = await api.get(f"/api/states/{ha.light}")
            return str(st["state"])

    return asyncio.run(get())


def set_light(ha: HaTestbed, on: bool) -> None:
    async def post() -> None:
        async with HaApi(ha) as api:
            await api.post(f"/api/services/light/turn_{'on' if on else 'off'}",
                           {"entity_id": ha.light})  # fmt: skip

    asyncio.run(post())


def switch_by_assist(d: LoomdProcess, ha: HaTestbed, word: str) -> None:
    """A typed "turn on|off the kitchen lights" acts through HA: HA's light is then `word`,
    and the board's device shows it."""
    turn = assist(d, f"turn {word} the kitchen lights")
    assert [a["code"] for a in turn["actions"]] == ["ok"], turn
    assert light_state(ha) == word
    until(f"HA's {word!r} back on the board", lambda: home(d)[DEVICE]["state"] == word)


@pytest.fixture(scope="session")
def piper_command(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Path:
    """ "Hey jarvis, ... turn on the kitchen lights" spoken by Piper (joe), 16 kHz WAV."""
    from loomd.audio.tts import PiperTts

    piper = PiperTts(str(models), "piper/en_US-joe-medium.onnx")
    pad = b"\0" * 16000  # 0.5 s
    pcm = pad + piper.synthesize("Hey jarvis!") + pad + piper.synthesize(
        "Turn on the kitchen lights.") + pad * 2  # fmt: skip
    out = tmp_path_factory.mktemp("piper") / "command.wav"
    write_wav(out, pcm)
    return out


@pytest.mark.models
def test_a_spoken_command_in_local_mode_switches_has_light(
    ha: HaTestbed, short_tmp: Path, models: Path, piper_command: Path
) -> None:
    token = short_tmp / "ha-token"
    token.write_text(ha.token)
    voice = (f'[voice]\nenabled = true\nmodels_dir = "{models}"\nagent = "assist"\n'
             'sink = "buffer"\n')  # fmt: skip
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d", board_toml(ha, token) + voice)
    set_light(ha, False)
    try:
        d.start(timeout=90)
        ready(d)
        dev = until("HA's state as the device's", lambda: home(d)[DEVICE]["state"] == "off"
                    and home(d)[DEVICE])  # fmt: skip
        assert (dev["name"], dev["area"], dev["source"]) == ("Kitchen Lights", "kitchen", "ha")

        p = loomctl(d, "voice", "test", str(piper_command), "--json", timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr + d.log.read_text()[-3000:]
        turn = json.loads(p.stdout)["turns"][0]
        assert turn["wake"] and "kitchen light" in turn["transcript"].lower(), turn
        assert turn["intent"]["name"] == "HassTurnOn" and turn["intent"]["via"] == "local", turn
        assert [(a["capability"], a["params"], a["code"]) for a in turn["actions"]] == [
            ("home.turn_on", {"device": DEVICE}, "ok")], turn  # fmt: skip
        assert light_state(ha) == "on"  # HA's own view
        until("HA's 'on' back on the board", lambda: home(d)[DEVICE]["state"] == "on")

        switch_by_assist(d, ha, "off")
    finally:
        d.close()


@pytest.fixture
def own_ha(tmp_path: Path) -> Iterator[tuple[HaTestbed, Path]]:
    """An HA of this test's own (it is killed), on the cached testbed tree."""
    if not (CACHE / "rootfs" / ".loomd-stage-reqs").exists():
        pytest.skip("no cached HA testbed (scripts/ha-testbed build)")
    run = tmp_path / "ha"
    p = subprocess.run([sys.executable, str(TESTBED), "up", "--dir", str(run)],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.splitlines()[-1])
    try:
        yield HaTestbed(info["url"], info["token"], info["light"], Path(info["log"])), run
    finally:
        subprocess.run([sys.executable, str(TESTBED), "down", "--dir", str(run)], timeout=120)


def saved(config: Path) -> bool:
    """HA has written the light's area and exposure to disk (it saves its registries ~10 s
    after a change; a SIGKILL before that would lose them, and the next start would not
    expose the light)."""
    try:
        reg = json.loads((config / ".storage" / "core.entity_registry").read_text())
    except (OSError, ValueError):
        return False
    return any(e["entity_id"] == "light.kitchen_lights" and e.get("area_id")
               and e.get("options", {}).get("conversation", {}).get("should_expose")
               for e in reg["data"]["entities"])  # fmt: skip


def test_ha_killed_is_a_clear_failure_and_the_board_reconnects(
    own_ha: tuple[HaTestbed, Path], short_tmp: Path
) -> None:
    ha, run = own_ha
    token = short_tmp / "ha-token"
    token.write_text(ha.token)
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d", board_toml(ha, token, reconnect_max_s="1.0"))
    try:
        d.start(timeout=60)
        ready(d)
        switch_by_assist(d, ha, "on")
        until("HA's registry on disk", lambda: saved(run / "config"), timeout=30)

        os.killpg(int((run / "hass.pid").read_text()), signal.SIGKILL)
        st = until("the status says HA is away",
                   lambda: (s := ha_status(d))["ha_api"] != "connected" and s)  # fmt: skip
        assert "Home Assistant" in st["ha_api"], st
        human = loomctl(d, "status").stdout
        assert st["ha_api"].split(";")[0] in human, human  # the status line a user reads
        # the device stays known; its action fails at once with HA's reason, not a timeout
        turn = assist(d, "turn off the kitchen lights")
        assert [(a["capability"], a["code"]) for a in turn["actions"]] == [
            ("home.turn_off", "capability_error")], turn  # fmt: skip
        why = "Kitchen Lights: Home Assistant is not connected (Home Assistant at "
        assert turn["actions"][0]["result"].startswith(why), turn
        assert turn["reply"].startswith("Sorry, that did not work: Kitchen Lights: Home"), turn
        assert DEVICE in home(d)

        p = subprocess.run([sys.executable, str(TESTBED), "restart", "--dir", str(run)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
        until("the board reconnected", lambda: ha_status(d)["ha_api"] == "connected")
        switch_by_assist(d, ha, "off")
    finally:
        d.close()


@pytest.mark.models
@pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning")  # wyoming
def test_a_local_wake_word_while_ha_holds_the_satellite(
    ha: HaTestbed, tmp_path: Path, models: Path, piper_command: Path
) -> None:
    """The per-wake-word switch with HA connected: the board is HA's adopted satellite
    (`mode = "satellite"`) but `wake_modes` gives "hey jarvis" to loomd's own assist: the
    command switches HA's light through the board's registry, and HA's pipeline never runs
    (no satellite run, HA's satellite entity stays idle)."""
    from loomd.assist.cli import turn
    from loomd.audio.io import read_wav
    from tests.homeassistant.test_satellite import _quiet, rig

    token = tmp_path / "ha-token"
    token.write_text(ha.token)
    set_light(ha, False)

    async def scenario() -> tuple[int, str]:
        async with rig(
            ha, tmp_path / "b", models, "local-word",
            names=("state", "bus", "agents", "home", "assist", "voice", "homeassistant"),
            voice={"agent": '"assist"'}, extra="[assist]\nenabled = true\nllm = false\n",
            url=f'"{ha.url}"', token_file=f'"{token}"', mode='"satellite"',
            wake_modes='{"hey_jarvis_v0.1" = "local"}',
        ) as r:  # fmt: skip
            assert r.sat.conn is not None  # HA holds the voice assistant
            async with asyncio.timeout(60):  # HA's light joined, the assist acts on it
                while not (await turn(r.bus, "turn off the kitchen lights", "", 10)).actions:  # noqa: ASYNC110
                    await asyncio.sleep(0.3)
            await r.mic(read_wav(piper_command), silence_s=1.0)
            await _quiet(r.heard)  # the board's own reply
            await r.api.wait_state(
                lambda s: any(x["entity_id"] == ha.light and x["state"] == "on" for x in s),
                "light",
            )
            sat = await r.api.get(f"/api/states/{r.satellite_entity}")
            return len(r.sat.history), str(sat["state"])

    runs, sat_state = asyncio.run(scenario())
    assert runs == 0, "HA's pipeline took a local wake word"
    assert sat_state == "idle", sat_state
