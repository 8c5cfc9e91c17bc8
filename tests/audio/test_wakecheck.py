"""The wake check on real audio and the real STT worker (whisper tiny.en's decoder through
loomd.audio.rescore): the wake phrase said passes the default rules; a TV line near the
phrase and other speech do not; a check between a clip's transcription and its rescoring
does not change the rescoring."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bench.tvnoise import espeak_pcm, mix
from loomd.audio.settings import WakeSettings
from loomd.audio.stt import SttWorker
from loomd.audio.wakecheck import PRE_S

pytestmark = [
    pytest.mark.models,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="espeak-ng and sox make the test speech",
    ),
]
RATE = 16000
RULES = WakeSettings().check


def segment(said: bytes, snr: float | None = None, seed: int = 5) -> bytes:
    """The wake segment the pipeline takes: `PRE_S` up to the phrase's end and 0.3 s after,
    the phrase in TV noise at `snr` (1 s of TV before it)."""
    pcm, _start, end = mix(said, snr, seed=seed, tail_s=1.0)
    stop = int((end + 0.3) * RATE) * 2
    return pcm[max(0, stop - int((PRE_S + 0.3) * RATE) * 2) : stop]


@pytest.fixture(scope="module")
def stt(models: Path) -> SttWorker:
    worker = SttWorker(str(models), "whisper/ggml-tiny.en.bin")
    asyncio.run(worker.load())
    yield worker
    worker.close()


def test_the_default_has_a_check() -> None:
    assert RULES is not None and RULES.checked


@pytest.mark.parametrize(("voice", "snr"), [("en-us", None), ("en-gb", None), ("en-us+f3", None)])
def test_the_phrase_said_passes(stt: SttWorker, voice: str, snr: float | None) -> None:
    """(In TV noise it often does not: that is bench/noise.py's recall, not a test.)"""
    assert RULES is not None
    heard = asyncio.run(
        stt.hear_phrase(segment(espeak_pcm("hey jarvis", voice), snr), "hey jarvis")
    )
    assert heard.accepts(RULES.margin, RULES.floor), heard


@pytest.mark.parametrize(
    "line", ["hey travis", "hey harvey", "and now the weather", "a jar of this honey"]
)
def test_other_speech_is_refused(stt: SttWorker, line: str) -> None:
    assert RULES is not None
    heard = asyncio.run(stt.hear_phrase(segment(espeak_pcm(line, "en-gb")), "hey jarvis"))
    assert not heard.accepts(RULES.margin, RULES.floor), heard


def test_the_phrase_is_the_one_configured(stt: SttWorker) -> None:
    """The same audio against another phrase: refused (what `[voice.wake] phrases` does)."""
    assert RULES is not None
    heard = asyncio.run(stt.hear_phrase(segment(espeak_pcm("hey jarvis")), "open sesame"))
    assert not heard.accepts(RULES.margin, RULES.floor), heard


def test_a_check_between_transcription_and_rescoring(stt: SttWorker) -> None:
    """The check encodes its segment in the scorer's context: the clip transcribed before it
    is encoded again for rescoring, so its scores are what they were."""
    clip = espeak_pcm("turn on the kitchen lights") + b"\0" * 8000
    sentences = ["turn on the kitchen lights", "turn off the kitchen lights"]

    async def run() -> tuple[list[float], list[float]]:
        res = await stt.transcribe(clip, tag="a")
        before = await stt.rescore(res.text, sentences)
        await stt.hear_phrase(segment(espeak_pcm("hey jarvis")), "hey jarvis")
        after = await stt.rescore(res.text, sentences)
        return [before.transcript, *before.scores], [after.transcript, *after.scores]

    before, after = asyncio.run(run())
    assert after == pytest.approx(before, abs=1e-4)
