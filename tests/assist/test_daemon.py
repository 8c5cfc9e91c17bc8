"""The assist in a real daemon, against a real mosquitto: typed and asked-back commands end
in the device's MQTT command at the broker; states published there show in `loomctl home`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.assist.conftest import assist
from tests.bridges.conftest import Mosquitto
from tests.conftest import LoomdProcess, loomctl, wait_until


async def test_turn_on_the_kitchen_lights_reaches_the_broker(
    home_daemon: LoomdProcess, broker: Mosquitto
) -> None:
    with broker.sub("home/kitchen/+/set") as sub:
        await sub.ready()
        turn = assist(home_daemon, "turn on the kitchen lights")
        got = await sub.wait(2)
    assert sorted(got) == ["home/kitchen/ceiling/set ON", "home/kitchen/counter/set ON"]
    assert turn["intent"]["name"] == "HassTurnOn" and turn["intent"]["via"] == "local"
    assert turn["intent"]["slots"] == {"area": "kitchen", "domain": "light"}
    assert {(a["capability"], a["params"]["device"], a["code"]) for a in turn["actions"]} == {
        ("home.turn_on", "kitchen_ceiling", "ok"),
        ("home.turn_on", "kitchen_counter", "ok"),
    }
    assert turn["reply"].startswith("Turned on the lights")
    assert turn["timings"]["action_done"] > 0


async def test_brightness_and_temperature_use_the_templates(
    home_daemon: LoomdProcess, broker: Mosquitto
) -> None:
    with broker.sub("home/+/+/set") as sub:
        await sub.ready()
        assist(home_daemon, "set the sofa lamp to 40%")
        assist(home_daemon, "set the temperature to 21 degrees")
        got = await sub.wait(2)
    assert "home/living_room/sofa_lamp/set 40" in got
    assert 'home/living_room/thermostat/set {"target": 21}' in got


async def test_state_from_the_broker_shows_in_loomctl_home(
    home_daemon: LoomdProcess, broker: Mosquitto
) -> None:
    broker.pub("home/hall/temperature", "21.5")
    broker.pub("home/living_room/thermostat/state", '{"target": 19.5, "mode": "heat"}')

    def both_known() -> dict | None:
        r = loomctl(home_daemon, "home", "--json")
        assert r.returncode == 0, r.stderr
        devices = {d["id"]: d for d in json.loads(r.stdout)["devices"]}
        known = devices["hall_temperature"]["state"] and devices["thermostat"]["state"]
        return devices if known else None

    devices = wait_until(both_known, 10, "the broker's states in loomctl home")
    assert devices["hall_temperature"]["state"] == "21.5"
    assert devices["thermostat"]["state"] == "19.5"
    assert devices["thermostat"]["attributes"]["mode"] == "heat"
    text = loomctl(home_daemon, "home").stdout
    assert "Hall [hall]" in text and "21.5 °C" in text
    turn = assist(home_daemon, "what is the hall temperature")
    assert turn["reply"] == "Hall temperature is 21.5 °C"


async def test_unlock_is_asked_back_and_runs_only_after_yes(
    home_daemon: LoomdProcess, broker: Mosquitto
) -> None:
    with broker.sub("home/hall/front_door/set") as sub:
        await sub.ready()
        asked = assist(home_daemon, "unlock the front door", "--conversation", "c1")
        assert asked["reply"] == "Unlock the front door?"
        assert asked["continue_conversation"] is True
        assert [a["code"] for a in asked["actions"]] == ["confirm"]
        # Another conversation's "yes" does not unlock it; "no" drops it.
        assert assist(home_daemon, "yes", "--conversation", "c2")["actions"] == []
        assert assist(home_daemon, "no", "--conversation", "c1")["reply"] == "Okay, I won't."
        assert assist(home_daemon, "yes", "--conversation", "c1")["actions"] == []
        assist(home_daemon, "unlock the front door", "--conversation", "c1")
        yes = assist(home_daemon, "yes", "--conversation", "c1")
        assert [(a["capability"], a["code"]) for a in yes["actions"]] == [("home.unlock", "ok")]
        got = await sub.wait(1)
    assert got == ["home/hall/front_door/set UNLOCK"]


async def test_distractors_do_not_act(home_daemon: LoomdProcess, broker: Mosquitto) -> None:
    with broker.sub("home/#") as sub:
        await sub.ready()
        garage = assist(home_daemon, "turn on the garage light")
        joke = assist(home_daemon, "tell me a joke")
        vague = assist(home_daemon, "the kitchen needs some light")
        broker.pub("home/marker", "end")
        got = await sub.wait(1)
    assert got == ["home/marker end"]
    assert garage["actions"] == [] and "garage" in garage["reply"]
    assert joke["actions"] == [] and joke["reply"] == "Sorry, I couldn't understand that"
    # no command, no known device: not "no device called needs some light" (the model's,
    # when [assist] llm is on: tests/assist/test_llm.py)
    assert vague["actions"] == [] and vague["reply"] == "Sorry, I couldn't understand that"
    assert vague["intent"]["via"] == "none", vague


async def test_the_bus_contract_and_the_turn_event(home_daemon: LoomdProcess) -> None:
    """Agents talk to the assist as loomctl does: a typed AssistRequest on assist.converse,
    an AssistTurn back, and the same turn published on assist.turn."""
    from loomd.messages import AssistRequest, AssistTurn, Topic
    from loomd.sdk import Client

    async with Client(home_daemon.endpoint, name="t") as bus:
        async with bus.subscribe(Topic.ASSIST_TURN) as turns:
            await turns.ready()
            req = AssistRequest("turn off the bedside lamp", conversation_id="sdk", site="")
            ev = await bus.request(Topic.ASSIST_CONVERSE, req.to_payload(), timeout=30)
            answer = AssistTurn.from_payload(ev.payload)
            published = AssistTurn.from_payload((await turns.get(timeout=10)).payload)
        bad = await bus.request(Topic.ASSIST_CONVERSE, {"text": 3, "nope": 1}, timeout=30)
    assert answer.reply.startswith("Turned off") and answer.conversation_id == "sdk"
    assert [(a.capability, a.code) for a in answer.actions] == [("home.turn_off", "ok")]
    assert published == answer
    assert "unknown fields" in AssistTurn.from_payload(bad.payload).error


async def test_a_request_in_another_language_uses_its_sentences(
    home_daemon: LoomdProcess, broker: Mosquitto
) -> None:
    """A voice site's `[voice] language` travels in the request: German sentences and
    replies from home-assistant-intents, the assist's own language untouched; a language
    it has no sentences for is an error event and a refusal, and the assist runs on."""
    from loomd.messages import AssistRequest, AssistTurn, ErrorEvent, Topic
    from loomd.sdk import Client

    async with Client(home_daemon.endpoint, name="t") as bus, bus.subscribe(Topic.ERROR) as errors:
        with broker.sub("home/+/+/set") as sub:
            await errors.ready()
            await sub.ready()
            req = AssistRequest("schalte bedside lamp aus", conversation_id="de", language="de")
            ev = await bus.request(Topic.ASSIST_CONVERSE, req.to_payload(), timeout=30)
            german = AssistTurn.from_payload(ev.payload)
            got = await sub.wait(1)
            req = AssistRequest("turn off the bedside lamp", language="xx")
            ev = await bus.request(Topic.ASSIST_CONVERSE, req.to_payload(), timeout=30)
            unknown = AssistTurn.from_payload(ev.payload)
            error = ErrorEvent.from_payload((await errors.get(timeout=10)).payload)
    assert got == ["home/bedroom/bedside/set OFF"]
    assert [(a.capability, a.code) for a in german.actions] == [("home.turn_off", "ok")]
    assert german.intent.name == "HassTurnOff" and not german.reply.startswith("Turned")
    assert unknown.actions == () and unknown.reply == "Sorry, I couldn't understand that"
    assert "no sentences for 'xx'" in error.message, error
    english = assist(home_daemon, "turn off the bedside lamp")
    assert english["reply"].startswith("Turned off"), english


def test_without_the_mqtt_bridge_an_mqtt_device_fails_at_once_and_says_why(
    short_tmp: Path,
) -> None:
    """No [mqtt]: the home's MQTT devices answer "enable [mqtt]" at once (it was the
    action's 5 s deadline, and loomctl's own 5 s said only that loomd did not answer)."""
    (short_tmp / "home.d").mkdir()
    shutil.copy(Path(__file__).parents[2] / "examples/home/home.toml", short_tmp / "home.d")
    d = LoomdProcess(short_tmp)
    d.start(timeout=60)
    try:
        wait_until(lambda: "home.turn_on" in loomctl(d, "caps").stdout, 20,
                   "the home to offer its capabilities")  # fmt: skip
        r = loomctl(d, "call", "home.turn_on", '{"device": "kitchen_ceiling"}')
        assert r.returncode == 1, r.stdout
        assert "capability_error" in r.stderr and "enable [mqtt]" in r.stderr, r.stderr
        assert "home/kitchen/ceiling/set" in r.stderr, r.stderr
    finally:
        d.close()
