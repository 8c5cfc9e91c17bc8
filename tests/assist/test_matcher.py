"""hassil over the registry: names, aliases, areas, numbers, capability sentences, fuzzy
repair of misheard names (same domain only), and distractors that must not become actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomd.home.registry import Registry, load_dir
from tests.assist.conftest import EXAMPLE

pytest.importorskip("hassil")

from loomd.assist.matcher import Matcher

CAPS = [
    {
        "name": "garden.water",
        "schema": {
            "type": "object",
            "properties": {
                "zone": {"enum": ["front", "back"]},
                "minutes": {"type": "integer", "minimum": 1, "maximum": 60},
            },
        },
        "sentences": ["water the {zone} garden [for {minutes} minutes]"],
    }
]


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    reg = Registry()
    for src in load_dir(EXAMPLE.parent):
        reg.set_source(src)
    return Matcher("en", reg.snapshot(), CAPS)


@pytest.mark.parametrize(
    ("text", "intent", "slots"),
    [
        ("turn on the kitchen lights", "HassTurnOn", {"area": "kitchen", "domain": "light"}),
        ("Turn on the kitchen ceiling light.", "HassTurnOn", {"name": "kitchen_ceiling"}),
        ("switch off the reading lamp", "HassTurnOff", {"name": "sofa_lamp"}),
        ("turn off the lounge lights", "HassTurnOff", {"area": "living_room"}),
        ("set the sofa lamp to 40%", "HassLightSet", {"name": "sofa_lamp", "brightness": 40}),
        ("set the temperature to 21 degrees", "HassClimateSetTemperature", {"temperature": 21}),
        ("unlock the front door", "HassTurnOff", {"name": "front_door", "domain": "lock"}),
        ("what is the hall temperature", "HassGetState", {"name": "hall_temperature"}),
        ("set a timer for 5 minutes", "HassStartTimer", {"minutes": 5}),
        ("never mind", "HassNevermind", {}),
        ("what time is it", "HassGetCurrentTime", {}),
        (
            "water the back garden for 10 minutes",
            "cap:garden.water",
            {"zone": "back", "minutes": 10},
        ),
    ],
)
def test_sentences(matcher: Matcher, text: str, intent: str, slots: dict) -> None:
    m = matcher.match(text)
    assert m is not None and m.intent == intent and not m.fuzzy and not m.unknown, m
    assert {k: m.slots.get(k) for k in slots} == slots


@pytest.mark.parametrize(
    ("heard", "device"),
    [
        ("turn on the sofa lump", "sofa_lamp"),
        ("turn on the kitchen sealing light", "kitchen_ceiling"),
        ("turn off the bed side lamp", "bedside_lamp"),
    ],
)
def test_misheard_names_are_repaired(matcher: Matcher, heard: str, device: str) -> None:
    assert matcher.recognize(heard) is None  # raw hassil misses it
    m = matcher.match(heard)
    assert m is not None and m.fuzzy and m.slots["name"] == device


@pytest.mark.parametrize(
    "text",
    [
        "turn on the garage light",
        "turn off the garden lights",
        "open the pod bay doors",
        "tell me a joke",
        "what is the meaning of life",
        "turn on the toaster",
    ],
)
def test_distractors_name_no_device(matcher: Matcher, text: str) -> None:
    m = matcher.match(text)
    assert (
        m is None
        or m.unknown
        or m.intent not in ("HassTurnOn", "HassTurnOff")
        or (not m.slots.get("name") and not m.slots.get("area"))
    ), m


@pytest.mark.parametrize(
    "text",
    [
        "the kitchen needs some light",
        "I am freezing in the living room",
        "the bedroom is too bright",
        "the hall could use some warmth",
    ],
)
def test_no_command_no_refusal(matcher: Matcher, text: str) -> None:
    """A sentence that says no command and names no device is not a command on an unknown
    device ("needs some light" parsed as a name by a verbless template): it is no match,
    so it goes to the model (or "couldn't understand"), never a confident refusal."""
    assert matcher.match(text) is None


@pytest.mark.parametrize(
    ("text", "slot", "words"),
    [
        ("turn on the garage light", "area", "garage"),
        ("open the front gate", "name", "front gate"),
        ("switch off the toaster", "name", "toaster"),
    ],
)
def test_commands_on_unknown_targets_name_them(
    matcher: Matcher, text: str, slot: str, words: str
) -> None:
    m = matcher.match(text)
    assert m is not None and m.unknown == {slot: words}, m


@pytest.mark.parametrize(
    "text",
    [
        "don't turn on the kitchen lights",
        "never turn off the sofa lamp",
        "I turned on the bedside lamp",
        "who turned on the kitchen lights",
        "the sofa lamp is on",
        "the kitchen lights are on",
    ],
)
def test_repairs_never_add_meaning(matcher: Matcher, text: str) -> None:
    """A repair fixes misheard words; it never drops a word that changes the sentence (a
    negation, "I turned", "is on"): these are one edit from a command and must not act."""
    assert matcher.recognize(text) is None  # hassil alone does not take them
    m = matcher.match(text)
    assert m is None or m.unknown, m


def test_misheard_split_words_are_still_repaired(matcher: Matcher) -> None:
    m = matcher.match("Turn off the lights in the mad room.")  # "bedroom", split
    assert m is not None and m.fuzzy and m.slots.get("area") == "bedroom", m


def test_repair_never_crosses_domains(matcher: Matcher) -> None:
    # "front dour light" is close to no light; the lock "front door" must not be chosen
    m = matcher.match("turn on the front dour light")
    assert m is None or not m.slots.get("name") == "front_door"


def test_vocabulary_has_the_names(matcher: Matcher) -> None:
    words = matcher.vocabulary()
    assert {"kitchen ceiling light", "reading lamp", "Living Room", "lounge", "back"} <= set(words)


@pytest.mark.parametrize(
    ("heard", "device"),
    [
        ("front on the sofa lamp,", "sofa_lamp"),  # a command word misheard
        ("turn onto reading lamp,", "sofa_lamp"),
        ('"Turn on the bedside lamp"', "bedside_lamp"),
        (
            "Turn off the counter light. Turn off the counter light.",
            "kitchen_counter",
        ),  # said twice
    ],
)
def test_whole_phrases_are_repaired(matcher: Matcher, heard: str, device: str) -> None:
    assert matcher.recognize(heard) is None
    m = matcher.match(heard)
    assert m is not None and m.fuzzy and m.slots["name"] == device, m


def test_numbers_survive_phrase_repair(matcher: Matcher) -> None:
    m = matcher.match("Santa timer for five minutes.")
    assert m is not None and m.intent == "HassStartTimer" and m.slots["minutes"] == 5
    m = matcher.match("set the bed side lamp to 30%.")
    assert m is not None and m.slots == {
        "name": "bedside_lamp",
        "brightness": 30,
        "domain": "light",
    }


def test_every_template_shape_is_a_phrase(matcher: Matcher) -> None:
    """The temperature templates speech-to-phrase lacks are sampled template by template:
    the area-less one ("set the temperature to # degrees", the one thermostat) is there."""
    assert matcher.recognize("At the temperature to 21 degrees.") is None
    m = matcher.match("At the temperature to 21 degrees.")  # "set", misheard
    assert m is not None and m.fuzzy and m.intent == "HassClimateSetTemperature", m
    assert m.slots["temperature"] == 21


def test_user_sentence_files(tmp_path: Path) -> None:
    path = tmp_path / "movie.yaml"
    path.write_text(
        "language: en\nintents:\n  HassTurnOff:\n    data:\n"
        "      - sentences: ['movie time']\n        slots: {area: living_room, domain: light}\n"
    )
    reg = Registry()
    for src in load_dir(EXAMPLE.parent):
        reg.set_source(src)
    m = Matcher("en", reg.snapshot(), (), [path]).match("movie time")
    assert m is not None and m.intent == "HassTurnOff"
    assert m.slots == {"area": "living_room", "domain": "light"}
