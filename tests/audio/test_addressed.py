"""The quiet end and the phrase as text rules, and the sensitivity presets (the wake check
itself: tests/audio/test_wakecheck.py; the daemon's side: tests/audio/test_noise.py)."""

from __future__ import annotations

import pytest

from loomd.audio.addressed import (
    BARE_THRESHOLD,
    CHECK_MARGIN,
    LEAD_STRICTNESS,
    PRESETS,
    Preset,
    check_wake,
    not_addressed,
    wake_phrase,
)
from loomd.audio.settings import WakeSettings
from loomd.config import ConfigError, build_section

STRICT = 0.85


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
    ("said", "command"),
    [
        ("Hey Jarvis, what time is it?", "What time is it?"),
        ("Hey, Travis. What time is it?", "What time is it?"),
        ("Jarvis, play some jazz.", "Play some jazz."),
        ("So hey Jarvis turn off the lights.", "Turn off the lights."),
        ("Play the harvest album.", ""),
        ("What time is it?", ""),
    ],
)
def test_the_phrase_before_a_command_said_straight_on_is_cut_leniently(
    said: str, command: str
) -> None:
    """An utterance that opens with the wake's audio (a command said straight on): the
    phrase, as whisper wrote it, is cut off; a transcript that does not open with it is
    left whole ("" = not found)."""
    heard = check_wake(said, "hey jarvis", LEAD_STRICTNESS)
    assert heard.ok == bool(command), heard
    assert heard.command == (command or said)


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
    assert low.check == PRESETS["low"]
    own = build_section(
        WakeSettings, {"threshold": 0.42, "thresholds": {"alexa_v0.1": 0.8}}, "voice.wake"
    )
    assert own.limits() == {"*": 0.42, "alexa_v0.1": 0.8} and own.bare_limit == 0.42
    # A preset's low threshold is for wakes its check follows
    off = build_section(WakeSettings, {"second_check": "off"}, "voice.wake")
    assert off.check is None and off.limits()["*"] >= BARE_THRESHOLD
    assert build_section(WakeSettings, {}, "voice.wake").bare_limit >= BARE_THRESHOLD
    always = build_section(WakeSettings, {"second_check": "always"}, "voice.wake")
    assert always.check is not None and always.check.checked
    mine = build_section(WakeSettings, {"check_margin": 0.3, "check_floor": 2.0}, "voice.wake")
    assert mine.check is not None and (mine.check.margin, mine.check.floor) == (0.3, 2.0)
    # A preset without a check gets one only with "always"
    assert Preset(0.5).checked is False and Preset(0.5, margin=CHECK_MARGIN).checked
    with pytest.raises(ConfigError, match="sensitivity"):
        build_section(WakeSettings, {"sensitivity": "max"}, "voice.wake")
    with pytest.raises(ConfigError, match="thresholds"):
        build_section(WakeSettings, {"thresholds": {"alexa": 3}}, "voice.wake")
