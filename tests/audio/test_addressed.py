"""The second check and the quiet end, as text rules (the daemon's side is in
tests/audio/test_noise.py): whisper's transcript of the wake segment plus the command."""

from __future__ import annotations

import pytest

from loomd.audio.addressed import (
    ALWAYS_STRICTNESS,
    PRESETS,
    check_wake,
    not_addressed,
    wake_phrase,
)
from loomd.audio.settings import WakeSettings
from loomd.config import ConfigError, build_section

STRICT = ALWAYS_STRICTNESS


def test_the_phrase_comes_from_the_model_file() -> None:
    assert wake_phrase("openwakeword/hey_jarvis_v0.1.onnx") == "hey jarvis"
    assert wake_phrase("/x/wake/ok_nabu.onnx") == "ok nabu"
    assert wake_phrase("alexa_v0.1") == "alexa"


@pytest.mark.parametrize(
    ("said", "command"),
    [
        ("Hey, Jarvis. Turn on the kitchen lights.", "Turn on the kitchen lights."),
        ("hey jarvis turn on the lights", "Turn on the lights"),
        ("Heyjarvis, play jazz.", "Play jazz."),
        ("Hey Jarvis.", ""),
    ],
)
def test_the_wake_phrase_is_heard_and_cut_off(said: str, command: str) -> None:
    heard = check_wake(said, "hey jarvis", STRICT)
    assert heard.ok, heard
    assert heard.command == command


@pytest.mark.parametrize(
    "said",
    ["and now the weather for the weekend", "Harvest season is here.", "Stay with us."],
)
def test_other_speech_is_not_the_wake_word(said: str) -> None:
    heard = check_wake(said, "hey jarvis", STRICT)
    assert not heard.ok, heard
    assert heard.command == said


def test_strictness_decides_near_misses() -> None:
    near = "Hey Travis, what time is it?"
    assert not check_wake(near, "hey jarvis", 0.85).ok
    assert check_wake(near, "hey jarvis", 0.5).ok


@pytest.mark.parametrize("text", ["", "...", "you", "Thank you.", "Hmm."])
def test_nothing_addressed(text: str) -> None:
    assert not_addressed(text)


def test_a_command_is_addressed() -> None:
    assert not_addressed("turn on the kitchen lights") == ""


@pytest.mark.parametrize("text", ["Yes.", "no", "Okay."])
def test_an_answer_is_addressed(text: str) -> None:
    """The answer to the board's own question ("Unlock the front door?") is a turn."""
    assert not_addressed(text) == ""


def test_sensitivity_presets_and_word_thresholds() -> None:
    low = build_section(WakeSettings, {"sensitivity": "low"}, "voice.wake")
    assert low.limits()["*"] == PRESETS["low"].threshold
    assert low.strictness == PRESETS["low"].strictness
    own = build_section(
        WakeSettings, {"threshold": 0.42, "thresholds": {"alexa_v0.1": 0.8}}, "voice.wake"
    )
    assert own.limits() == {"*": 0.42, "alexa_v0.1": 0.8}
    off = build_section(WakeSettings, {"second_check": "off"}, "voice.wake")
    assert off.strictness == 0.0 and off.check_for(0.1) == 0.0
    auto = build_section(WakeSettings, {"sensitivity": "low"}, "voice.wake")
    low = PRESETS["low"]
    assert auto.check_for(0.5) == low.strictness
    assert auto.check_for(low.trust) == 0.0  # trusted: no check
    always = build_section(WakeSettings, {"second_check": "always"}, "voice.wake")
    assert always.check_for(1.0) == (PRESETS["default"].strictness or ALWAYS_STRICTNESS)
    with pytest.raises(ConfigError, match="sensitivity"):
        build_section(WakeSettings, {"sensitivity": "max"}, "voice.wake")
    with pytest.raises(ConfigError, match="thresholds"):
        build_section(WakeSettings, {"thresholds": {"alexa": 3}}, "voice.wake")
