"""Sentences to intents: hassil over home-assistant-intents, with the registry's names,
aliases and areas as slot lists, plus the sentences capabilities declare and user sentence
files. When the exact match fails (an STT error in a name), the names hassil could not
place are matched fuzzily against the registry (rapidfuzz, a threshold, never across
domains) and the repaired sentence is matched exactly again: the fuzzy layer only repairs
words, the decision stays hassil's."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hassil import (
    Intents,
    RangeSlotList,
    RecognizeResult,
    TextSlotList,
    WildcardSlotList,
    merge_dict,
    recognize_all,
    recognize_best,
)
from hassil.models import UnmatchedTextEntity
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from loomd.assist.phrases import intent_sentences
from loomd.errors import LoomdError
from loomd.messages import Domain, HomeSnapshot

__all__ = ["CAP_PREFIX", "Match", "Matcher", "cap_intent", "has_negation", "numbers_out"]

CAP_PREFIX = "cap:"  # intent names of capability sentences: "cap:<capability name>"
# Intents whose unknown target must never fall through to the model: "turn on the
# garage light" with no garage light is answered "no device called ...", not guessed.
COMMANDS = frozenset(
    {"HassTurnOn", "HassTurnOff", "HassLightSet", "HassSetPosition", "HassClimateSetTemperature"}
)
_SAFE = re.compile(r"[^a-z0-9_]")
BEST = "loomd_capability"  # metadata of capability sentences: they win over built-in ones
# The intents the assist handles; home-assistant-intents' others (weather, media, lists,
# vacuums, ...) are left to the model rather than matched and then not acted on.
HANDLED = frozenset({
    "HassTurnOn", "HassTurnOff", "HassLightSet", "HassGetState", "HassClimateSetTemperature",
    "HassSetPosition", "HassNevermind", "HassGetCurrentTime", "HassStartTimer",
    "HassCancelTimer", "HassCancelAllTimers", "HassTimerStatus",
})  # fmt: skip
# Sentences taken from each home-assistant-intents template for the phrase set (loomd.assist.
# phrases; docs/design/voice-stt.md: phrase count and build time against it)
PER_TEMPLATE = 100
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}  # fmt: skip
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90, "hundred": 100}  # fmt: skip


def cap_intent(capability: str) -> str:
    return CAP_PREFIX + capability


@dataclass(frozen=True)
class Match:
    """What a sentence means: the intent, its slot values (device ids, area ids, numbers),
    the spoken text of each slot, the response key, and how it was found."""

    intent: str
    slots: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    response: str = "default"
    fuzzy: bool = False  # a name was repaired before the exact match
    unknown: dict[str, str] = field(default_factory=dict)  # slot -> text no device/area fits
    text: str = ""


class Matcher:
    """Built once per registry/catalogue change (a few ms); `match()` is pure."""

    def __init__(
        self,
        language: str,
        home: HomeSnapshot,
        caps: Iterable[Mapping[str, Any]] = (),
        sentence_files: Iterable[Path] = (),
        *,
        threshold: float = 80.0,
        phrase_threshold: float = 88.0,
        area: str = "",
    ) -> None:
        from home_assistant_intents import get_intents

        data = get_intents(language)
        if data is None:
            raise LoomdError(f"home-assistant-intents has no sentences for {language!r}")
        self.language = language
        self.responses: dict[str, Any] = data.get("responses") or {}
        data["intents"] = {k: v for k, v in data["intents"].items() if k in HANDLED}
        self.threshold = threshold
        self.home = home
        self.cap_lists: dict[str, Any] = {}
        custom = self._cap_sentences(caps)
        self._custom = {"intents": dict(custom["intents"])}
        merge_dict(data, custom)
        for path in sentence_files:
            merge_dict(data, _load_yaml(path))
        self.intents = Intents.from_dict(data)
        self.lists = self._slot_lists(home)
        self.lists.update(self.cap_lists)
        self.context: dict[str, Any] = {}
        if not area:  # one thermostat: "set the temperature to 21" means it
            climates = {d.area for d in home.devices if d.domain == Domain.CLIMATE and d.area}
            area = next(iter(climates)) if len(climates) == 1 else ""
        if area:
            self.context["area"] = area
        self.phrase_threshold = phrase_threshold
        self._templates: dict[str, str] = {}  # phrase -> its HA template (template_of)
        self._phrases = self._sample_phrases(language, caps)
        self._names = {d.id: (d.domain, [d.name, *d.aliases]) for d in home.devices}
        self._areas = {a.id: [a.name, *a.aliases] for a in home.areas}

    @property
    def names(self) -> list[str]:
        """The home's device and area names and aliases, as the home writes them."""
        return [n for _, ns in self._names.values() for n in ns] + [
            n for ns in self._areas.values() for n in ns
        ]

    # -- building ---------------------------------------------------------------------------
    def _slot_lists(self, home: HomeSnapshot) -> dict[str, Any]:
        names = []
        for d in home.devices:
            ctx = {"domain": d.domain.value}
            if d.area:
                ctx["area"] = d.area
            for spoken in dict.fromkeys([d.name, *d.aliases]):
                names.append((spoken, d.id, ctx))
        areas = [
            (spoken, a.id) for a in home.areas for spoken in dict.fromkeys([a.name, *a.aliases])
        ]
        return {
            "name": TextSlotList.from_tuples(names, allow_template=False),
            "area": TextSlotList.from_tuples(areas, allow_template=False),
            "floor": TextSlotList.from_tuples([], allow_template=False),
        }

    def _cap_sentences(self, caps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """`{"intents": {"cap:<name>": {"data": [{"sentences": [...]}]}}}`, each `{param}`
        bound to a list of its own built from the parameter's schema."""
        intents: dict[str, Any] = {}
        newest: dict[str, Mapping[str, Any]] = {}
        for c in caps:  # one version's sentences per capability: the highest that has some
            if c.get("sentences") and int(c.get("version", 1)) >= int(
                newest.get(str(c["name"]), {}).get("version", 0)
            ):
                newest[str(c["name"])] = c
        for i, c in enumerate(newest.values()):
            sentences = c.get("sentences") or ()
            props = (c.get("schema") or {}).get("properties") or {}
            rewritten = []
            for sentence in sentences:

                def bind(m: re.Match[str], i: int = i, props: Any = props) -> str:
                    param = m.group(1)
                    lst = f"cap{i}_{_SAFE.sub('_', param.lower())}"
                    self.cap_lists[lst] = _list_for(props.get(param) or {})
                    return "{" + lst + ":" + param + "}"

                rewritten.append(re.sub(r"\{(\w+)\}", bind, sentence))
            data = {"sentences": rewritten, "metadata": {BEST: str(c["name"])}}
            intents[cap_intent(str(c["name"]))] = {"data": [data]}
        return {"intents": intents}

    def vocabulary(self) -> list[str]:
        words = [n for d in self.home.devices for n in (d.name, *d.aliases)]
        words += [n for a in self.home.areas for n in (a.name, *a.aliases)]
        for lst in self.cap_lists.values():
            if isinstance(lst, TextSlotList):
                words += [str(v.value_out) for v in lst.values]
        return list(dict.fromkeys(w for w in words if w))

    # -- matching ---------------------------------------------------------------------------
    def recognize(self, text: str) -> RecognizeResult | None:
        """hassil as it is, nothing added (the bench's baseline calls this too)."""
        return recognize_best(
            text,
            self.intents,
            slot_lists=self.lists,
            intent_context=self.context or None,
            language=self.language,
            best_metadata_key=BEST,
            best_slot_name="name",
        )

    def match(self, text: str) -> Match | None:
        """hassil on the transcript; if it fails, on the transcript with its misheard names
        repaired; then on the closest phrase of the home (speech-to-phrase's sentences);
        the result always comes from an exact hassil match, or names the unknown target."""
        r = self.recognize(text)
        if r is not None:
            return self._to_match(r, text)
        clean = _clean(text)
        if _NEGATION.search(clean):
            return None  # "don't turn on the lights": hassil's exact match or nothing
        if clean != text:
            r = self.recognize(clean)
            if r is not None:
                return self._to_match(r, text, fuzzy=True)
        repaired = self._repair(clean)
        if repaired is not None and not repaired.unknown:
            return dataclasses.replace(repaired, text=text)
        phrased = self._phrase(clean)
        if phrased is not None:
            return dataclasses.replace(phrased, text=text)
        return repaired

    # -- phrases: the home's closed set of sentences ------------------------------------------
    @property
    def phrases(self) -> list[str]:
        """The home's sentences (numbers as `#`): phrase repair's and rescoring's set."""
        return self._phrases

    def template_of(self, phrase: str) -> str:
        """The home-assistant-intents template a phrase was sampled from ("" for the
        speech-to-phrase and capability sentences, which are expanded whole)."""
        return self._templates.get(phrase, "")

    def _sample_phrases(self, language: str, caps: Iterable[Mapping[str, Any]]) -> list[str]:
        """Every sentence speech-to-phrase's templates make with this home's names (numbers
        left as `#`), the capabilities' sentences, and up to `PER_TEMPLATE` sentences of
        each of home-assistant-intents' templates: some ten thousand."""
        from hassil.sample import sample_intents
        from home_assistant_intents import get_speech_to_phrase_intents

        data = get_speech_to_phrase_intents(language) or {"intents": {}}
        data["intents"] = {k: v for k, v in data["intents"].items() if k in HANDLED}
        merge_dict(data, self._custom)
        phrases: set[str] = set()
        import logging

        logging.getLogger("hassil.sample").setLevel(logging.ERROR)  # "no values for floor"
        try:
            base = Intents.from_dict(data)
            lists = {**base.slot_lists, **self.lists}
            for _intent, text in sample_intents(base, lists, language=language,
                                                expand_ranges=False):  # fmt: skip
                phrases.add(_phrase_of(text))
            # HA's own templates of every handled intent, sampled by shape (loomd.assist.
            # phrases): speech-to-phrase has none for some (setting a temperature) and says
            # others only one way (German "im {area} an", never "in der {area} ein"). Each
            # phrase remembers its template, so that rescoring's few candidates are not all
            # one template's ("set the color temperature of all of the light in ...").
            for template, text in intent_sentences(self.intents, self.lists, set(HANDLED),
                                                   PER_TEMPLATE):  # fmt: skip
                phrase = _phrase_of(text)
                if phrase not in phrases:
                    phrases.add(phrase)
                    self._templates[phrase] = template
        except Exception as exc:  # a template this hassil cannot sample: exact matching only
            logging.getLogger("loomd.assist").warning("no phrase repair: %s", exc)
        return sorted(p for p in phrases if p)

    def _phrase(self, text: str) -> Match | None:
        if not self._phrases:
            return None
        norm, numbers = numbers_out(text)
        hit = process.extractOne(norm, self._phrases, scorer=fuzz.ratio,
                                 score_cutoff=self.phrase_threshold)  # fmt: skip
        if hit is None:
            return None
        phrase = hit[0]
        if phrase.count("#") != len(numbers) or not _only_misheard(phrase, norm):
            return None
        for n in numbers:
            phrase = phrase.replace("#", n, 1)
        r = self.recognize(phrase)
        return self._to_match(r, text, fuzzy=True) if r is not None else None

    def _to_match(self, r: RecognizeResult, text: str, fuzzy: bool = False) -> Match:
        slots = {k: e.value for k, e in r.entities.items()}
        texts = {k: (e.text or str(e.value)).strip() for k, e in r.entities.items()}
        for key in ("domain",):
            if key in r.context and key not in slots:
                slots[key] = r.context[key]
        return Match(r.intent.name, slots, texts, r.response or "default", fuzzy, {}, text)

    def _repair(self, text: str) -> Match | None:
        """Names hassil could not place: the closest registry name of the same domain, if
        close enough, then an exact match again (best repair first); else the unknown name,
        for a refusal."""
        unknown: Match | None = None
        unknown_chunks = 1  # a refusal needs a command's words around the unknown name
        repairs: dict[str, float] = {}
        for r in recognize_all(
            text,
            self.intents,
            slot_lists=self.lists,
            intent_context=self.context or None,
            allow_unmatched_entities=True,
            language=self.language,
        ):
            said = {
                k: _strip(e.text)
                for k, e in r.unmatched_entities.items()
                if isinstance(e, UnmatchedTextEntity) and e.text != MISSING
            }
            if not said or not set(said) <= {"name", "area"}:
                continue
            domain = r.entities["domain"].value if "domain" in r.entities else None
            fixed, score = text, 100.0
            for slot, words in said.items():
                best = self._closest(slot, words, domain)
                if best is None:
                    score = 0.0
                    break
                fixed = re.sub(re.escape(words), best[0], fixed, count=1, flags=re.I)
                score = min(score, best[1])
            if score:
                repairs[fixed] = max(score, repairs.get(fixed, 0.0))
            elif (
                r.intent.name in COMMANDS
                and r.text_chunks_matched > unknown_chunks
                and _commanded(text, r)
                and len(said) == 1
                and all(len(w.split()) <= 4 for w in said.values())
            ):
                unknown_chunks = r.text_chunks_matched
                unknown = Match(r.intent.name, {}, said, "default", False, said, text)
        for fixed in sorted(repairs, key=lambda f: -repairs[f])[:5]:
            if not _only_misheard(fixed, text):
                continue
            again = self.recognize(fixed)
            if again is not None:
                return self._to_match(again, text, fuzzy=True)
        return unknown

    def _closest(self, slot: str, said: str, domain: Any) -> tuple[str, float] | None:
        if slot == "name":
            choices = [
                n
                for dom, names in self._names.values()
                if domain is None or dom.value == domain
                for n in names
            ]
        else:
            choices = [n for names in self._areas.values() for n in names]
        if not choices or len(said) < 3:
            return None
        hit = process.extractOne(said.lower(), [c.lower() for c in choices], scorer=fuzz.ratio)
        if hit is None or hit[1] < self.threshold:
            return None
        return choices[hit[2]], float(hit[1])


MISSING = "<missing>"  # hassil's text for an entity the sentence has no words for
# Words that say nothing about what to do: a parse whose words outside its slots are only
# these ("the office needs some light" as `[activate] [the] {area} {name} [scene]`) was not
# told to act, so its unknown "name" is no device the user asked for.
_FILLER = frozenset("the a an in at of on my our your to for and all please".split())


def _commanded(text: str, r: RecognizeResult) -> bool:
    """Whether the sentence says what to do, outside the slots hassil filled or left
    unmatched: a word of the template's own that is not filler ("turn", "open", "lock",
    "set", "off"; "on" alone is not one)."""
    rest = f" {text.lower()} "
    texts = [e.text for e in r.entities.values()]
    texts += [e.text for e in r.unmatched_entities.values() if isinstance(e, UnmatchedTextEntity)]
    for said in texts:
        said = (said or "").strip().lower()
        if said and said != MISSING:
            rest = rest.replace(f" {said} ", " ", 1)
    return any(w not in _FILLER for w in re.findall(r"[a-z']+", rest))


def _clean(text: str) -> str:
    """What whisper adds around words: quotes, brackets, a phrase said twice."""
    text = re.sub(r"[\"“”«»()\[\]]", " ", text)
    text = " ".join(text.split())
    clauses = [c.strip() for c in re.split(r"[,.;!?]+", text) if c.strip()]
    if len(clauses) > 1 and clauses[1].lower() == clauses[0].lower():
        return clauses[0]  # whisper repeating itself (cut off by its token bound or not)
    return text.strip(" ,.;!?")


# Words that turn a command into its opposite: no repair may drop them.
_NEGATION = re.compile(r"\b(don'?t|do not|doesn'?t|never|not|no longer|stop)\b", re.I)
# Words whisper (or a speaker) adds that change nothing; any other word the transcript has
# beyond its phrase ("I turned on ...", "who turned on ...", "the lamp is on") is meaning.
_HEARD_EXTRA = frozenset("the a an and so uh um oh please now".split())


def _only_misheard(phrase: str, heard: str) -> bool:
    """Whether `heard` is `phrase` with words misheard, split or dropped, not words added:
    a repair is for what whisper got wrong, never for a different sentence that happens to
    be close ("I turned on the desk lamp", "the desk lamp is on" are not "turn on the desk
    lamp"). An added word is allowed when it says nothing (`_HEARD_EXTRA`) or is the rest
    of a misheard word beside it ("mad room" for "bedroom", "guard in" for "garden")."""
    want = numbers_out(phrase)[0].split()
    said = numbers_out(heard)[0].split()
    ops = Levenshtein.opcodes(want, said)
    misheard: dict[int, str] = {}  # a position in `said` -> the phrase's words it replaced
    for op in ops:
        if op.tag == "replace":
            for j in range(op.dest_start, op.dest_end):
                misheard[j] = "".join(want[op.src_start : op.src_end])
    for op in ops:
        if op.tag != "insert":
            continue
        for j in range(op.dest_start, op.dest_end):
            w = said[j]
            joined = [  # the misheard word beside it, with this one: what it replaced?
                (said[k] + w if k < j else w + said[k], misheard[k])
                for k in (j - 1, j + 1)
                if k in misheard
            ]
            if w not in _HEARD_EXTRA and not any(
                fuzz.ratio(x, was) >= 60 and abs(len(x) - len(was)) <= 2 for x, was in joined
            ):
                return False
    return True


def _phrase_of(text: str) -> str:
    """A sampled sentence as a phrase: a number slot and every number as `#`, lower case."""
    return numbers_out(re.sub(r"\{[^}]*\}", "#", text))[0]


def has_negation(text: str) -> bool:
    return _NEGATION.search(text) is not None


def numbers_out(text: str) -> tuple[str, list[str]]:
    """Lower case, `%` as percent, every number (digits or words) as `#`; the numbers in
    order, as digits."""
    text = text.lower().replace("%", " percent").replace("°", " degrees ")
    text = re.sub(r"[^\w#'\s-]", " ", text)
    words: list[str] = []
    numbers: list[str] = []
    for w in text.replace("-", " ").split():
        if _NUMBER.fullmatch(w) or w in _SMALL or w in _TENS:
            value = w if _NUMBER.fullmatch(w) else str(_SMALL.get(w, _TENS.get(w)))
            if words and words[-1] == "#" and w in _SMALL and numbers and numbers[-1].endswith("0"):
                numbers[-1] = str(int(numbers[-1]) + int(value))  # "twenty one"
                continue
            words.append("#")
            numbers.append(value)
        elif w == "#":
            words.append("#")
        else:
            words.append(w)
    return " ".join(words), numbers


def _strip(words: str) -> str:
    words = words.strip()
    return words[4:] if words.lower().startswith("the ") else words


def _list_for(schema: Mapping[str, Any]) -> Any:
    if "enum" in schema:
        return TextSlotList.from_tuples([(str(v), v) for v in schema["enum"]], allow_template=False)
    if schema.get("type") in ("integer", "number"):
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 1000))
        return RangeSlotList(name=None, start=lo, stop=hi)
    return WildcardSlotList(name=None)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped]  # (PyYAML comes with hassil)

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LoomdError(f"sentence file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LoomdError(f"sentence file {path}: expected a map with `intents:`")
    return data
