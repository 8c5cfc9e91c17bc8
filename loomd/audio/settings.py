"""`[voice]` and its nested stage tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loomd.audio.addressed import BARE_THRESHOLD, CHECK_MARGIN, PRESETS, Preset, wake_phrase
from loomd.audio.language import LANGUAGES, piper_voice, stt_model
from loomd.audio.stt import ENGINES
from loomd.audio.vad import VADS
from loomd.config import Section, Switch, option, switch
from loomd.errors import ConfigError

__all__ = [
    "AecSettings",
    "FrontendSettings",
    "MicSettings",
    "StopSettings",
    "SttSettings",
    "TtsSettings",
    "VadSettings",
    "VoiceSettings",
    "WakeSettings",
    "WyomingSettings",
]

SOURCES = ("auto", "none", "mic", "wav", "bus")
SINKS = ("auto", "none", "speaker", "wav", "bus", "buffer")
NS_DEFAULT = 3


def _scores_ok(value: Any) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0.01 <= v <= 1.0
        for v in value.values()
    )


@dataclass(frozen=True)
class WakeSettings(Section):
    """The wake words and how easily they wake (docs/design/voice-noise.md)."""

    models: tuple[str, ...] = option(factory=lambda: ("openwakeword/hey_jarvis_v0.1.onnx",))
    # Every .onnx in this folder is a wake word too; "" = the models dir's wake/ folder
    models_dir: str = option("", max_len=4096)
    sensitivity: str = option("default", choices=tuple(PRESETS), reload=True)
    # 0 = the sensitivity's; a word's own in `thresholds` (by file stem) wins over both
    threshold: float = option(0.0, min=0.0, max=1.0, reload=True)
    thresholds: Mapping[str, Any] = option(
        factory=dict, valid=_scores_ok, expected="a table of model name = score from 0.01 to 1",
        reload=True,
    )  # fmt: skip
    # The wake check: whisper's decoder hears the wake phrase in the wake segment
    # (loomd.audio.wakecheck); "auto": the sensitivity's, "always", "off"
    second_check: str = option("auto", choices=("auto", "always", "off"), reload=True)
    # The check's rules, nats per token (0 = the sensitivity's): the phrase's own score
    # must be at least -check_floor, and within check_margin of whisper's best guess
    check_floor: float = option(0.0, min=0.0, max=20.0, reload=True)
    check_margin: float = option(0.0, min=0.0, max=20.0, reload=True)
    # The phrase of a model whose file name does not say it (by file stem)
    phrases: Mapping[str, str] = option(factory=dict, reload=True)
    # While the board plays audio with no wake check: a score over it stops playback at once
    # (echo cancellation leaves a residue for its first second).
    speaking_threshold: float = option(0.6, min=0.01, max=1.0, reload=True)
    # While the board plays audio with the wake check on (docs/design/voice-bargein.md): a
    # score over it is a barge-in candidate, which ducks playback by `bargein_duck_db` at
    # once; the check confirms it (playback stops, the turn opens) or refuses it (the volume
    # comes back). 0 = the wake threshold (`limits`).
    bargein_threshold: float = option(0.0, min=0.0, max=1.0, reload=True)
    bargein_duck_db: float = option(20.0, min=0.0, max=60.0, reload=True)
    # The check's margin for a barge-in candidate (nats per token; 0 = the check's own):
    # the board's voice under the person's, even cancelled, pulls whisper's guess away from
    # the phrase (bench/bargein_check.py: real wakes over the board scored gaps up to 1.9)
    bargein_margin: float = option(2.0, min=0.0, max=20.0, reload=True)
    refractory_s: float = option(2.0, min=0.0, max=60.0, reload=True)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.sensitivity]

    def limits(self) -> dict[str, float]:
        """The score that wakes, per word ("*": any other word). A preset's threshold is
        low because its check follows: with the check off, it is at least `BARE_THRESHOLD`."""
        base = self.threshold or self.preset.threshold
        if not self.threshold and self.check is None:
            base = max(base, BARE_THRESHOLD)
        return {"*": base, **{k: float(v) for k, v in self.thresholds.items()}}

    def playback_limits(self) -> float | dict[str, float]:
        """The score that acts while the board plays: with the check, a barge-in candidate
        (ducked, then checked); without it, `speaking_threshold` (stops at once)."""
        if self.check is None:
            return self.speaking_threshold
        if self.bargein_threshold:
            return self.bargein_threshold
        return self.limits()

    def bargein_check(self) -> tuple[float | None, float | None]:
        """The check's rule (margin, floor) for a barge-in candidate."""
        rules = self.check or Preset(0.0, margin=CHECK_MARGIN)
        return self.bargein_margin or rules.margin, rules.floor

    @property
    def bare_limit(self) -> float:
        """The score that wakes where no check follows (Wyoming's wake service: the
        satellite acts on the detection): the configured threshold, else `BARE_THRESHOLD`."""
        return self.threshold or max(self.preset.threshold, BARE_THRESHOLD)

    @property
    def check(self) -> Preset | None:
        """The wake check's rules (`floor`, `margin`); None = no check."""
        if self.second_check == "off":
            return None
        p = self.preset
        rules = Preset(p.threshold, self.check_floor or p.floor, self.check_margin or p.margin)
        if rules.checked:
            return rules
        return Preset(p.threshold, margin=CHECK_MARGIN) if self.second_check == "always" else None

    def phrase(self, word: str) -> str:
        return self.phrases.get(word) or wake_phrase(word)


@dataclass(frozen=True)
class StopSettings(Section):
    """The stop word, armed while the board plays: no pinned wheel ships a "stop" model
    (docs/design/voice-stop.md), so it is off until one is put in the models folder."""

    model: str = option("", max_len=4096)  # an openWakeWord .onnx; "" = no stop word
    threshold: float = option(0.5, min=0.01, max=1.0, reload=True)


@dataclass(frozen=True)
class AecSettings(Section):
    enabled: bool = option(True)
    tail_ms: int = option(200, min=20, max=1000)
    converge_ms: int = option(0, min=0, max=10000, reload=True)
    self_wake_guard: bool = option(True, reload=True)
    guard_score: float = option(0.3, min=0.01, max=1.0, reload=True)
    guard_s: float = option(1.5, min=0.1, max=10.0, reload=True)
    gate: bool = option(True)


@dataclass(frozen=True)
class FrontendSettings(Section):
    """webrtc-noise-gain after the echo canceller (loomd/audio/frontend.py); the defaults
    come from bench/assist.py (docs/design/voice.md, "Noise front end")."""

    noise_suppression: int = option(NS_DEFAULT, min=0, max=4)  # 0 = off
    auto_gain: int = option(0, min=0, max=31)  # target dBFS; 0 = off
    # The utterance for speech to text too (off: whisper heard the suppressed audio worse)
    stt: bool = option(False)

    @property
    def enabled(self) -> bool:
        return self.noise_suppression > 0 or self.auto_gain > 0


@dataclass(frozen=True)
class WyomingSettings(Section):
    enabled: bool = option(False)
    host: str = option("127.0.0.1", max_len=255)
    port: int = option(10700, min=1, max=65535)
    mdns: bool = option(True)


@dataclass(frozen=True)
class VadSettings(Section):
    """End of speech: the classifier and the rule on top of it; the defaults come from
    bench/noise.py (docs/design/voice-noise.md)."""

    engine: str = option("webrtc", choices=VADS)
    mode: int = option(2, min=0, max=3)  # webrtcvad's aggressiveness
    threshold: float = option(0.5, min=0.05, max=0.95)  # silero / micro: speech probability
    # The near-field rule: voiced frames this many dB under the speaker's level are the
    # room (a TV), not the speaker; 0 = off (the room's rule replaced it)
    level_drop_db: float = option(0.0, min=0.0, max=40.0)
    # The room's rule: voiced frames must be this many dB over the room's level before the
    # wake (a TV the VAD calls speech is not the speaker); 0 = off
    floor_db: float = option(4.0, min=0.0, max=30.0)
    preroll_ms: int = option(300, min=0, max=2000)
    hangover_ms: int = option(300, min=100, max=5000)
    min_speech_ms: int = option(200, min=20, max=5000)
    max_utterance_s: float = option(15.0, min=1.0, max=60.0)
    no_speech_s: float = option(5.0, min=0.5, max=60.0)


@dataclass(frozen=True)
class SttSettings(Section):
    # whisper.cpp, or Moonshine (docs/design/voice-stt.md: measured, not better here)
    engine: str = option("whisper", choices=tuple(ENGINES))
    # "" = the engine's model for [voice] language (loomd.audio.language)
    model: str = option("", max_len=4096)
    threads: int = option(1, min=1, max=16)
    vocabulary: tuple[str, ...] = option(factory=tuple)
    # Add the assist's names (devices, areas) to whisper's prompt (off: with tiny.en a
    # long list prompt makes it repeat itself; docs/design/assist.md)
    assist_vocabulary: bool = option(False, reload=True)


@dataclass(frozen=True)
class TtsSettings(Section):
    engine: str = option("piper", choices=("piper", "espeak"))
    # "" = the catalogue's Piper voice for [voice] language (espeak-ng's, if it has none or
    # it is not installed)
    voice: str = option("", max_len=4096)
    threads: int = option(0, min=0, max=16)  # 0: one per core (ONNX Runtime's default)


@dataclass(frozen=True)
class MicSettings(Section):
    device: str = option("", max_len=256)


@dataclass(frozen=True)
class VoiceSettings(Section):
    SECTION: ClassVar[str] = "voice"

    enabled: Switch = switch()
    site: str = option("local", max_len=64)
    # What the board hears and speaks: STT's language, the assist's sentences (each request
    # says it), the Piper voice; a code whisper knows ("en", "de", "fr", ...)
    language: str = option("en", choices=LANGUAGES)
    source: str = option("auto", choices=SOURCES)
    source_path: str = option("", max_len=4096)
    sink: str = option("auto", choices=SINKS)
    sink_dir: str = option("", max_len=4096)
    # "" = [paths] models_dir, where `loomctl models fetch` puts them.
    models_dir: str = option("", max_len=4096)
    system_prompt: str = option(
        "You are a voice assistant on a small board. Answer in one or two short sentences.",
        max_len=4096,
        reload=True,
    )
    reply_timeout_s: float = option(30.0, min=1.0, max=600.0, reload=True)
    # Who answers this site: the assist (intents, actions), the router directly, or nobody
    agent: str = option("assist", choices=("assist", "llm", "none"), reload=True)
    followup_s: float = option(5.0, min=0.0, max=60.0, reload=True)
    recorder_size: int = option(50, min=1, max=10000)
    # Media under an announcement is lowered by this much (dB), then restored; 0 = cut
    duck_db: float = option(20.0, min=0.0, max=60.0, reload=True)
    wake: WakeSettings = option(factory=WakeSettings)
    stop: StopSettings = option(factory=StopSettings)
    vad: VadSettings = option(factory=VadSettings)
    stt: SttSettings = option(factory=SttSettings)
    tts: TtsSettings = option(factory=TtsSettings)
    mic: MicSettings = option(factory=MicSettings)
    aec: AecSettings = option(factory=AecSettings)
    frontend: FrontendSettings = option(factory=FrontendSettings)
    wyoming: WyomingSettings = option(factory=WyomingSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.stt_model:
            raise ConfigError("voice.stt.engine", self.stt.engine,
                              f"an engine with a model for language {self.language!r} (whisper), "
                              "or [voice.stt] model set")  # fmt: skip
        if self.stt.engine != "whisper" and self.wake.second_check != "off":
            # the wake check is whisper's decoder (loomd.audio.wakecheck); without it the
            # presets' low thresholds would wake on the TV
            raise ConfigError("voice.wake.second_check", self.wake.second_check,
                              f'"off" with [voice.stt] engine = "{self.stt.engine}" (the wake '
                              "check needs whisper)")  # fmt: skip

    @property
    def stt_model(self) -> str:
        """The STT model: `[voice.stt] model`, else the engine's for the language."""
        return self.stt.model or stt_model(self.stt.engine, self.language)

    @property
    def tts_voice(self) -> str:
        """The Piper voice: `[voice.tts] voice`, else the language's ("" if none)."""
        return self.tts.voice or piper_voice(self.language)
