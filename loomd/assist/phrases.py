"""The sentences a hassil template makes, sampled so that every alternative is in them.

Phrase repair and rescoring (loomd.assist.matcher, loomd.assist.rescore) compare what whisper
wrote with a closed set of the home's sentences. speech-to-phrase's templates are small and
are expanded whole; home-assistant-intents' own templates are not: one template makes up to
millions of sentences (German `<schalten> (<licht>|...) <area> ein`: the articles and
prepositions of `<area>` alone multiply), and expanded in order the first thousand
sentences all say "schalt Licht Küche ein", never "Schalte das Licht in der Küche ein".

So each template is sampled by its shape: its canonical sentence (the first item of every
alternative) and every sentence that differs from it in one choice (one alternative, one
optional word, one order of a permutation), each with the home's names, areas and other
slot values filled in. When shapes x values exceed `budget`, a seeded random subset is
taken (every shape first, then random pairs), so the set is the same on every build.
Numbers (range lists) stay as `{name}`; templates with a wildcard or an empty list make
nothing (nothing could match them). docs/design/voice-stt.md has the measurements."""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Mapping
from typing import Any

from hassil import (
    Alternative,
    Expression,
    Intents,
    ListReference,
    Permutation,
    RangeSlotList,
    RuleReference,
    Sentence,
    Sequence,
    TextChunk,
    TextSlotList,
)
from hassil.util import normalize_whitespace

__all__ = ["intent_sentences", "one_change_sentences", "template_sentences"]

_MARK = "\x00"  # a slot list's place in a shape, filled with its values afterwards
_PERMUTATIONS = 6  # orders of a permutation taken (its items' own order first)


class _NoValues(LookupError):
    pass


def one_change_sentences(
    expr: Expression, lists: Mapping[str, Any], rules: Mapping[str, Sentence], used: set[str]
) -> list[str]:
    """The canonical text of `expr` (first item of every alternative), then each text that
    differs from it in one choice; a text slot list as a marker (its name added to `used`),
    a range as `{name}`."""
    if isinstance(expr, TextChunk):
        return [expr.original_text]
    if isinstance(expr, Alternative):
        first = one_change_sentences(expr.items[0], lists, rules, used)
        return first + [one_change_sentences(e, lists, rules, used)[0] for e in expr.items[1:]]
    if isinstance(expr, (Sequence, Permutation)):  # (Permutation is a Sequence's sibling)
        parts = [one_change_sentences(e, lists, rules, used) for e in expr.items]
        canon = [p[0] for p in parts]
        out = ["".join(canon)]
        for i, p in enumerate(parts):
            out += ["".join([*canon[:i], v, *canon[i + 1 :]]) for v in p[1:]]
        if isinstance(expr, Permutation):
            orders = itertools.islice(itertools.permutations(canon), 1, _PERMUTATIONS)
            out += [" ".join(order) for order in orders]
        return out
    if isinstance(expr, ListReference):
        slot_list = lists.get(expr.list_name)
        if isinstance(slot_list, RangeSlotList):
            return ["{" + (slot_list.name or expr.slot_name) + "}"]
        if isinstance(slot_list, TextSlotList) and slot_list.values:
            used.add(expr.list_name)
            return [f"{_MARK}{expr.list_name}{_MARK}"]
        raise _NoValues(expr.list_name)  # empty, a wildcard, or not there
    if isinstance(expr, RuleReference):
        rule = rules.get(expr.rule_name)
        if rule is None:
            raise _NoValues(expr.rule_name)
        return one_change_sentences(rule.expression, lists, rules, used)
    raise TypeError(f"unexpected hassil expression {type(expr).__name__}")


def _values(
    slot_list: TextSlotList, lists: Mapping[str, Any], rules: Mapping[str, Sentence]
) -> list[str]:
    """Each value's canonical text, once (`set()`: a value's own lists are not filled)."""
    texts = [one_change_sentences(v.text_in, lists, rules, set())[0] for v in slot_list.values]
    return list(dict.fromkeys(t for t in texts if _MARK not in t))


def template_sentences(
    template: Sentence, lists: Mapping[str, Any], rules: Mapping[str, Sentence], budget: int
) -> list[str]:
    """Up to `budget` sentences of `template`: its shapes (one_change_sentences) with the
    slot lists filled; every shape with every value when they fit, else every shape once
    (values drawn) then seeded random pairs. Empty when a list it needs has no values."""
    used: set[str] = set()
    try:
        shapes = one_change_sentences(template.expression, lists, rules, used)
        names = sorted(used)
        values = [_values(lists[n], lists, rules) for n in names]
    except _NoValues:
        return []
    if any(not v for v in values):
        return []
    shapes = list(dict.fromkeys(normalize_whitespace(s).strip() for s in shapes))
    total = len(shapes)
    for v in values:
        total *= len(v)
    if total <= budget:
        pairs: Any = itertools.product(shapes, itertools.product(*values))
    else:
        rng = random.Random(zlib.crc32(shapes[0].encode()))  # the same draw every build
        firsts = shapes[:budget]
        pairs = [(s, tuple(rng.choice(v) for v in values)) for s in firsts]
        pairs += [
            (rng.choice(shapes), tuple(rng.choice(v) for v in values))
            for _ in range(budget - len(firsts))
        ]
    out: list[str] = []
    for shape, fill in pairs:
        for name, value in zip(names, fill, strict=True):
            shape = shape.replace(f"{_MARK}{name}{_MARK}", value)
        out.append(normalize_whitespace(shape).strip())
    return list(dict.fromkeys(out))


def intent_sentences(
    intents: Intents,
    lists: Mapping[str, Any],
    names: set[str],
    budget: int,
) -> list[tuple[str, str]]:
    """(template, sentence) for every template of the intents `names` (template_sentences,
    `budget` each), wildcard templates left out; `template` names it ("HassTurnOn#3")."""
    rules = intents.expansion_rules
    all_lists = {**intents.slot_lists, **lists}
    out: list[tuple[str, str]] = []
    for name in sorted(names & set(intents.intents)):
        blocks = intents.intents[name].data
        for i, (block, template) in enumerate((b, t) for b in blocks for t in b.sentences):
            local = {**rules, **block.expansion_rules} if block.expansion_rules else rules
            if any(n in block.wildcard_list_names for n in template.list_names(local)):
                continue
            key = f"{name}#{i}"
            out += [(key, s) for s in template_sentences(template, all_lists, local, budget)]
    return out
