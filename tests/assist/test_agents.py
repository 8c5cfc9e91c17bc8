"""Capabilities in the conversation: an agent's sentences reach its capability, the devices
it declares join the home, the model-free paths (timers, time) answer from templates."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.assist.conftest import EXAMPLE, assist, home_config
from tests.bridges.conftest import Mosquitto
from tests.conftest import LoomdProcess, loomctl, loomctl_sub, wait_until

LIGHTS = Path(__file__).resolve().parents[2] / "examples" / "agents" / "lights.py"


@pytest.fixture
def lights_daemon(short_tmp: Path, broker: Mosquitto) -> Iterator[LoomdProcess]:
    root = short_tmp / "d"
    (root / "plugins").mkdir(parents=True)
    shutil.copy(LIGHTS, root / "plugins" / "lights.py")
    extra = f'[agents]\ndirs = ["{root / "plugins"}"]\nentry_points = false\n'
    d = LoomdProcess(root, home_config(broker, extra))
    (root / "home.d").mkdir()
    shutil.copy(EXAMPLE, root / "home.d" / "home.toml")
    try:
        d.start(timeout=30)
        yield d
    finally:
        d.close()


def wait_for_device(d: LoomdProcess, device: str) -> dict:
    def found() -> list[dict]:
        r = loomctl(d, "home", "--json")
        return [x for x in json.loads(r.stdout or "{}").get("devices", []) if x["id"] == device]

    return wait_until(found, 20, f"{device} to join the home")[0]


def test_capability_sentences_and_agent_devices(lights_daemon: LoomdProcess) -> None:
    d = lights_daemon
    dimmer = wait_for_device(d, "living_dimmer")
    assert dimmer["source"] == "agent:lights" and dimmer["domain"] == "light"
    caps = loomctl(d, "caps").stdout
    assert "says: dim the {room} [room] lights to {level} [percent]" in caps
    assert "home.unlock@1  [sdk home] (confirm) (sensitive)" in caps
    deadline = time.monotonic() + 20
    while True:  # the assist reads the catalogue every few seconds
        turn = assist(d, "dim the kitchen lights to 30 percent")
        if turn["intent"]["name"] == "cap:lights.set" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert turn["intent"] == {
        "name": "cap:lights.set",
        "slots": {"room": "kitchen", "level": 30},
        "via": "local",
    }
    assert [(a["capability"], a["params"], a["code"]) for a in turn["actions"]] == [
        ("lights.set@2", {"room": "kitchen", "level": 30}, "ok")
    ]
    assert turn["reply"] == "The kitchen lights are at 30 percent"
    on = assist(d, "turn on the living room dimmer")
    assert [(a["capability"], a["params"]["device"], a["code"]) for a in on["actions"]] == [
        ("home.turn_on", "living_dimmer", "ok")
    ]
    assert on["actions"][0]["result"]["result"] == {"living": 100}


def test_timers_ring_through_voice_say(lights_daemon: LoomdProcess) -> None:
    d = lights_daemon
    sub = loomctl_sub(d, "voice.say", 1)
    try:
        assert sub.stderr is not None
        ready = sub.stderr.readline()  # loomctl says so once the daemon routes to it
        assert ready.startswith("loomctl: subscribed to voice.say"), ready
        t = assist(d, "set a timer for 2 seconds")
        assert t["intent"]["name"] == "HassStartTimer" and t["reply"] == "Timer set for 2 seconds"
        out, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
    said = json.loads(out.splitlines()[0])
    assert said["payload"]["text"] == "Your 2 seconds timer is done"
    loomctl(d, "pub", "voice.stop", '{"reason": "stop"}')
    assert assist(d, "set a timer for 5 minutes")["reply"] == "Timer set for 5 minutes"
    status = assist(d, "how much time is left on my timer")
    assert status["intent"]["name"] == "HassTimerStatus"
    assert "ends in 4 minutes" in status["reply"] or "ends in 5 minutes" in status["reply"]
    assert assist(d, "cancel the timer")["reply"] == "Timer cancelled"
    assert assist(d, "cancel the timer")["reply"].startswith("Sorry")
