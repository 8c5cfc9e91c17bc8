"""The assist: words to actions."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from loomd.messages.base import Topic, _Payload


# -- assist: words to actions ---------------------------------------------------------------
class IntentVia(StrEnum):
    LOCAL = "local"  # a sentence matched (hassil)
    LLM = "llm"  # the model chose a tool or answered
    NONE = "none"  # nothing understood the request


@dataclass(frozen=True)
class AssistRequest(_Payload, topic=Topic.ASSIST_CONVERSE):
    """Text for the assist, on `Topic.ASSIST_CONVERSE` (request/reply: an `AssistTurn`).
    `conversation_id` keeps a few turns of context (a voice site, a loomctl session);
    `speech_end_ns` (monotonic clock of the board) lets the turn time its actions from the
    end of speech."""

    text: str
    conversation_id: str = ""
    site: str = ""  # the voice site it was heard at ("" for typed text)
    language: str = ""  # "" for the assist's configured language
    speech_end_ns: int = 0
    utterance_id: str = ""


@dataclass(frozen=True)
class IntentInfo(_Payload):
    name: str = ""
    slots: dict[str, Any] = field(default_factory=dict)
    via: str = IntentVia.NONE.value


@dataclass(frozen=True)
class ActionRecord(_Payload):
    """One action a turn ran (or asked to confirm): the capability, its params, the
    broker's result code and result."""

    capability: str
    params: dict[str, Any] = field(default_factory=dict)
    code: str = ""  # a broker result code; "confirm" while it waits for a yes
    result: Any = None


@dataclass(frozen=True)
class AssistTurn(_Payload, topic=Topic.ASSIST_TURN):
    """A finished turn: what was heard, understood, done and said, and when (ms from the
    end of speech when it is known, else from the text's arrival)."""

    transcript: str
    intent: IntentInfo = field(default_factory=IntentInfo)
    actions: tuple[ActionRecord, ...] = ()
    reply: str = ""
    route: str = ""  # "" (local intent), or the router's route of the LLM turn
    timings: dict[str, float] = field(default_factory=dict)
    conversation_id: str = ""
    site: str = ""
    utterance_id: str = ""
    continue_conversation: bool = False  # the reply asks back: listen again without a wake word
    error: str = ""
    NESTED = MappingProxyType({"actions": ActionRecord})

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> AssistTurn:
        intent = IntentInfo.from_payload(payload.get("intent") or {})
        return super()._build({**payload, "intent": intent})


@dataclass(frozen=True)
class Vocabulary(_Payload):
    """Names the assist knows (devices, aliases, areas, capability words): the speech to
    text stage's initial prompt, so whisper spells them the way the house does."""

    words: tuple[str, ...] = ()
    language: str = "en"

    @property
    def prompt(self) -> str:
        return ", ".join(self.words)

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> Vocabulary:
        return cls(**{**payload, "words": tuple(str(w) for w in payload.get("words") or ())})
