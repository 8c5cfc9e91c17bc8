"""Voice: transcripts, speech, state, stop/mute, turn stages and the hand-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loomd.errors import LoomdError
from loomd.messages.base import Topic, _Payload


class VoiceState(StrEnum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class Transcript(_Payload, topic=Topic.VOICE_TRANSCRIPT):
    text: str
    utterance_id: str
    site: str = "local"
    confidence: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms since speech end


class IgnoredWhy(StrEnum):
    NO_SPEECH = "no_speech"  # nobody spoke after the wake word
    NOT_THE_WAKE_WORD = "not_the_wake_word"  # the second check did not hear the phrase
    NOT_ADDRESSED = "not_addressed"  # empty, a filler, nothing to act on


@dataclass(frozen=True)
class TurnIgnored(_Payload, topic=Topic.VOICE_IGNORED):
    """A turn that ended quietly, with no reply: what was heard and why it was let go."""

    utterance_id: str
    why: IgnoredWhy
    detail: str = ""
    transcript: str = ""
    site: str = "local"
    wake: str = ""
    wake_score: float = 0.0

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> TurnIgnored:
        return cls(**{**payload, "why": IgnoredWhy(str(payload.get("why")))})


@dataclass(frozen=True)
class SayRequest(_Payload, topic=Topic.VOICE_SAY):
    text: str
    priority: str = "normal"  # normal | announcement (interrupts)
    site: str = "local"
    utterance_id: str = ""  # the turn this answers, if any


@dataclass(frozen=True)
class VoiceStateEvent(_Payload, topic=Topic.VOICE_STATE, qos="realtime"):
    state: VoiceState
    site: str = "local"
    utterance_id: str = ""
    muted: bool = False  # the microphone is muted (`voice.mute`): no wake, no turn

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> VoiceStateEvent:
        return cls(**{**payload, "state": VoiceState(str(payload.get("state")))})


@dataclass(frozen=True)
class VoiceStop(_Payload, topic=Topic.VOICE_STOP, qos="realtime"):
    """Stop playback and cancel the turn's generation (barge-in, `loomctl voice stop`)."""

    site: str = "local"
    reason: str = ""


class BargeInStep(StrEnum):
    DUCKED = "ducked"  # a candidate: playback lowered, the wake check runs on its segment
    CONFIRMED = "confirmed"  # the check heard the wake phrase: playback stopped, a turn opens
    REFUSED = "refused"  # the check did not (or failed): the volume is back, playback goes on


@dataclass(frozen=True)
class BargeIn(_Payload, topic=Topic.VOICE_BARGEIN, qos="realtime"):
    """A wake word heard while the board plays (docs/design/voice-bargein.md): each step of
    one candidate, with its wake score and, once checked, what whisper heard."""

    step: BargeInStep
    wake: str
    score: float
    site: str = "local"
    heard: str = ""  # whisper's transcript of the wake segment (confirmed / refused)
    gap: float = 0.0  # how far under whisper's guess the phrase scored (nats per token)
    check_ms: float = 0.0  # the check's own time (whisper's encode and decodes)

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> BargeIn:
        return cls(**{**payload, "step": BargeInStep(str(payload.get("step")))})


@dataclass(frozen=True)
class VoiceMute(_Payload, topic=Topic.VOICE_MUTE):
    """Mute the microphone (Home Assistant's "Mute" switch, `loomctl voice mute on`): no
    wake word, no turn, nothing on `audio.frames`; playback goes on."""

    muted: bool


class TurnStage(StrEnum):
    """A voice turn's flight-recorder stages, in order: ms since the end of speech."""

    VAD_END = "vad_end"
    WAKE_CHECK = "wake_check"  # the wake check's verdict was in (loomd.audio.wakecheck)
    STT_START = "stt_start"
    STT_END = "stt_end"
    MATCHED = "matched"  # the assist understood the transcript (local intent)
    ACTION_DONE = "action_done"  # the assist's actions finished
    LLM_FIRST = "llm_first"  # the assist's first answer from the model
    REPLY = "reply"  # the assist's reply arrived
    FIRST_TOKEN = "first_token"
    FIRST_SENTENCE = "first_sentence"
    FIRST_AUDIO = "first_audio"
    SPOKEN = "spoken"

    @property
    def label(self) -> str:
        return _STAGE_LABELS[self]


_STAGE_LABELS = {
    TurnStage.VAD_END: "VAD end",
    TurnStage.WAKE_CHECK: "wake checked",
    TurnStage.STT_START: "STT start",
    TurnStage.STT_END: "STT end",
    TurnStage.MATCHED: "intent matched",
    TurnStage.ACTION_DONE: "action done",
    TurnStage.LLM_FIRST: "model answered",
    TurnStage.REPLY: "reply",
    TurnStage.FIRST_TOKEN: "LLM first token",
    TurnStage.FIRST_SENTENCE: "first sentence",
    TurnStage.FIRST_AUDIO: "TTS first audio",
    TurnStage.SPOKEN: "spoken",
}


# -- the voice hand-off: another part takes a turn (Home Assistant's pipeline) ---------------
# On a wake the voice component asks on `voice.wake` (request/reply, short deadline) while
# it starts listening itself; a `WakeClaim` with `STREAM` makes it publish the microphone's
# frames (those since the wake first) on `audio.frames.<site>` until a `VoiceRelease`
# (or its utterance limit), `DROP` ends the turn, `LOCAL` or no answer keeps it local.
# `voice.play` plays audio through the board's sink (echo reference, barge-in and the
# self-wake guard included) and answers when it has played.
class WakeAction(StrEnum):
    LOCAL = "local"  # loomd's own pipeline takes the turn
    STREAM = "stream"  # the claimant takes it: stream the mic to it
    DROP = "drop"  # nobody takes it (muted, a wake word switched off)


@dataclass(frozen=True)
class WakeDetected(_Payload, topic=Topic.VOICE_WAKE):
    word: str  # the wake model's name, e.g. "hey_jarvis_v0.1"
    score: float
    site: str = "local"
    utterance_id: str = ""

    @property
    def phrase(self) -> str:
        return self.word.split("_v")[0].replace("_", " ")


@dataclass(frozen=True)
class WakeClaim(_Payload):
    action: WakeAction = WakeAction.LOCAL
    by: str = ""

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> WakeClaim:
        return cls(**{**payload, "action": WakeAction(str(payload.get("action", "local")))})


@dataclass(frozen=True)
class VoiceListen(_Payload, topic=Topic.VOICE_LISTEN):
    """Open the microphone without a wake word and stream it (a question asked back)."""

    site: str = "local"
    utterance_id: str = ""


@dataclass(frozen=True)
class VoiceRelease(_Payload, topic=Topic.VOICE_RELEASE):
    site: str = "local"
    utterance_id: str = ""
    reason: str = ""  # "end_of_speech", "error: ...", "disconnected"


@dataclass(frozen=True)
class PlayAudio(_Payload, topic=Topic.VOICE_PLAY):
    """16 kHz mono s16le audio to play on the board's sink."""

    pcm: bytes
    site: str = "local"
    utterance_id: str = ""
    announcement: bool = False  # cuts what is playing

    def __post_init__(self) -> None:
        if not isinstance(self.pcm, bytes) or len(self.pcm) % 2:
            raise LoomdError("PlayAudio.pcm: s16le bytes (an even length)")


@dataclass(frozen=True)
class PlayDone(_Payload):
    played: bool  # False: cut off (barge-in, stop) or nothing to play on
    seconds: float = 0.0


@dataclass(frozen=True)
class RescoreRequest(_Payload, topic=Topic.VOICE_RESCORE):
    """Score `sentences` against the clip of `utterance_id` with whisper's own decoder
    (request/reply: a `RescoreReply`); the voice component answers while its STT worker
    still holds that clip (the last one it transcribed)."""

    utterance_id: str
    transcript: str
    sentences: tuple[str, ...] = ()
    # Only the best matters within this margin of the transcript's score: the others may
    # stop decoding early (their scores are then upper bounds). None: every score exact.
    margin: float | None = None

    def __post_init__(self) -> None:
        if not self.utterance_id or not self.sentences or len(self.sentences) > 64:
            raise LoomdError("RescoreRequest: an utterance_id and 1-64 sentences")


@dataclass(frozen=True)
class RescoreReply(_Payload):
    """Mean token log-probabilities (0 is certain): the transcript's, then each sentence's
    in the order asked; or `error` (rescoring unavailable, the clip is gone)."""

    transcript_score: float = 0.0
    scores: tuple[float, ...] = ()
    ms: float = 0.0
    error: str = ""
