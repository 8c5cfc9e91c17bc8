"""The phrase set's sampling of home-assistant-intents' templates (loomd.assist.phrases):
every alternative of a template is in it, bounded, the same on every build; and the German
sentence HA's template makes but speech-to-phrase does not ("in der Küche ein")."""

from __future__ import annotations

import tomllib

import pytest

pytest.importorskip("hassil")

from hassil import TextSlotList
from hassil.parse_expression import parse_sentence

from loomd.assist.matcher import PER_TEMPLATE, Matcher
from loomd.assist.phrases import one_change_sentences, template_sentences
from loomd.assist.rescore import candidates
from loomd.home.registry import Registry, source_from_tables
from tests.assist.test_voice import GERMAN_HOME

RULES = {"area": parse_sentence("[(in|im) ]{area}|(in|an) (der|dem) {area}")}
LISTS = {"area": TextSlotList.from_strings(["Küche", "Bad", "Flur"])}
TEMPLATE = parse_sentence("(schalte|mach) [das ]Licht <area> (ein|an)")


def test_a_template_is_sampled_by_one_change_from_its_canonical_sentence() -> None:
    used: set[str] = set()
    shapes = [" ".join(s.replace("\x00", "|").split()) for s in
              one_change_sentences(TEMPLATE.expression, LISTS, RULES, used)]  # fmt: skip
    assert used == {"area"}
    assert shapes == [
        "schalte das Licht in |area| ein",  # the first item everywhere
        "mach das Licht in |area| ein",
        "schalte Licht in |area| ein",  # the optional word left out
        "schalte das Licht im |area| ein",
        "schalte das Licht |area| ein",
        "schalte das Licht in der |area| ein",  # <area>'s second alternative, its first items
        "schalte das Licht in |area| an",
    ]


def test_every_shape_with_every_value_when_they_fit_the_budget() -> None:
    got = template_sentences(TEMPLATE, LISTS, RULES, budget=1000)
    assert len(got) == 7 * 3 == len(set(got))
    # hassil's in-order expansion reaches this one after 3 * 2 * ... others: here it is
    assert "schalte das Licht in der Küche ein" in got
    assert {"mach das Licht in Flur ein", "schalte das Licht in Bad an"} <= set(got)


def test_over_the_budget_every_shape_once_then_the_same_draw_every_time() -> None:
    got = template_sentences(TEMPLATE, LISTS, RULES, budget=9)
    assert 7 <= len(got) <= 9
    assert got == template_sentences(TEMPLATE, LISTS, RULES, budget=9)
    heads = {s.rsplit(" ", 2)[0] + " " + s.split()[-1] for s in got}  # the area left out
    assert {h.replace(" ", "") for h in heads} >= {
        "schaltedasLichtinein", "machdasLichtinein", "schalteLichtinein",
        "schaltedasLichtimein", "schaltedasLichtein", "schaltedasLichtinderein",
        "schaltedasLichtinan",
    }, got  # fmt: skip
    empty = {"area": TextSlotList.from_strings([])}
    assert template_sentences(TEMPLATE, empty, RULES, budget=10) == []  # nothing can match


def german_matcher() -> Matcher:
    reg = Registry()
    reg.set_source(source_from_tables("de", tomllib.loads(GERMAN_HOME)))
    return Matcher("de", reg.snapshot())


def test_the_german_phrase_set_says_in_der_kueche_ein_and_stays_bounded() -> None:
    """speech-to-phrase's German templates say "im {area} an"; HA's say "in der {area} ein"
    too, two choices from the first ones. The set must hold it (phrase repair and
    rescoring can only pick what it holds) and stay within PER_TEMPLATE a template."""
    m = german_matcher()
    assert "schalte das licht in der küche ein" in m.phrases
    assert "schalte das licht in der küche aus" in m.phrases
    templates = sum(len(b.sentences) for i in m.intents.intents.values() for b in i.data)
    assert len(m.phrases) < 8000 + PER_TEMPLATE * templates
    # whisper base's words for espeak-ng's German (docs/design/voice-stt.md)
    for heard in ("Schalternas Licht in Berküche ein.", "Schaltermas Licht in der Küche ein."):
        assert candidates(m, heard)[0] == "schalte das Licht in der Küche ein", heard
        got = m.match(heard)
        assert got is not None and (got.intent, got.slots.get("area")) == ("HassTurnOn", "kueche")


def test_rescoring_candidates_take_one_sentence_of_each_template() -> None:
    """HA's templates make many near-copies of one sentence; the few candidates rescoring
    asks whisper about would all be one template's ("set the color temperature of all of
    the light in ..." ten times over a long garbled transcript). One each, the closest."""
    from loomd.assist.matcher import numbers_out
    from tests.assist.test_matcher import CAPS, EXAMPLE, load_dir

    reg = Registry()
    for src in load_dir(EXAMPLE.parent):
        reg.set_source(src)
    m = Matcher("en", reg.snapshot(), CAPS)
    heard = "What is Madoram Richard. What is Madoram Richard. What is Madoram Richard."
    got = candidates(m, heard, 10)
    templates = [m.template_of(numbers_out(c)[0]) for c in got]
    assert len(got) >= 5 and any(templates), got
    assert len([t for t in templates if t]) == len({t for t in templates if t}), got
