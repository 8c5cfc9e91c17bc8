"""The voice pipeline end to end on the real daemon, with real models.

"hey jarvis, turn on the kitchen lights" (espeak-ng) -> wake -> whisper transcript -> a
reply from SmolLM2 (a llama.cpp responder on `llm.chat`, per the loomd.messages contract) ->
Piper audio that whisper transcribes back to the reply."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.audio.wer import wer
from loomd.messages import Topic, Transcript, VoiceStateEvent
from loomd.sdk import Client
from tests.audio.conftest import Responder, say_wav, voice_toml
from tests.conftest import LoomdProcess, subscribed
from tests.conftest import loomctl as run_loomctl

pytestmark = pytest.mark.models


def loomctl(d: LoomdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_loomctl(d, *args, timeout=300)  # a whole voice turn on a slow machine


def transcribe(models: Path, pcm: bytes) -> str:
    from loomd.audio.stt import SttWorker

    async def run() -> str:
        w = SttWorker(str(models), "whisper/ggml-tiny.en.bin")
        try:
            return (await w.transcribe(pcm)).text
        finally:
            w.close()

    return asyncio.run(run())


def test_wake_transcript_reply_and_spoken_answer(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path, llm: Responder, tmp_path: Path
) -> None:
    # No follow-up: a reply that ends in a question would open one on the clip's silence
    loomd_proc.write_config(voice_toml(models, recorder_size="3", followup_s="0.0"))
    loomd_proc.start(timeout=60)
    out = tmp_path / "reply.wav"

    async def scenario() -> dict[str, Any]:
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            llm.ready = asyncio.Event()
            server = asyncio.create_task(llm.serve(bus))
            subs = subscribed(bus, Topic.VOICE_STATE, Topic.VOICE_TRANSCRIPT)
            async with subs as (states, transcripts):
                async with asyncio.timeout(30):
                    await llm.ready.wait()
                r = await bus.call("voice.test", args=[str(command_clip), str(out)], timeout=240)
                tr = Transcript.from_payload((await transcripts.get(timeout=10)).payload)
                seen = []
                while (
                    VoiceStateEvent.from_payload((ev := await states.get(timeout=10)).payload).state
                    != "idle"
                ):
                    seen.append(VoiceStateEvent.from_payload(ev.payload).state)
            server.cancel()
            return {"result": r, "transcript": tr, "states": seen}

    got = asyncio.run(scenario())
    r, tr = got["result"], got["transcript"]
    assert r["wake"] is True
    assert len(r["turns"]) == 1, r["turns"]
    (turn,) = r["turns"]
    assert turn["wake"] == "hey_jarvis_v0.1" and turn["wake_score"] >= 0.5
    assert wer("turn on the kitchen lights", turn["transcript"]) == 0.0, turn
    assert tr.text == turn["transcript"] and tr.utterance_id == turn["utterance_id"]
    assert turn["outcome"] == "ok", turn
    # The router saw the user's words as a voice-priority chat turn.
    assert llm.requests[-1].priority == "voice"
    assert llm.requests[-1].messages[-1].content == turn["transcript"]
    assert turn["reply"] == llm.replies[-1].strip() and turn["reply"]
    # The states a display would show, in order.
    assert got["states"] == ["listening", "thinking", "speaking"]
    # Timings: ordered, from the end of speech.
    t = turn["timings"]
    order = ["vad_end", "stt_start", "stt_end", "first_token", "first_sentence", "first_audio"]
    assert [t[k] for k in order] == sorted(t[k] for k in order), t
    # The spoken reply transcribes back to the reply text.
    heard = transcribe(models, read_wav(out))
    assert wer(turn["reply"], heard) <= 0.35, (turn["reply"], heard)

    # The flight recorder kept it; `loomctl voice last` shows the waterfall.
    p = loomctl(loomd_proc, "voice", "last", "1")
    assert p.returncode == 0, p.stderr
    assert turn["utterance_id"] in p.stdout and "first_audio" in p.stdout
    assert "turn on the kitchen lights" in p.stdout.lower()


def test_loomctl_voice_test_and_say(
    loomd_proc: LoomdProcess, models: Path, speech_dir: Path, tmp_path: Path
) -> None:
    """No router running: the transcript still comes out, the turn is marked failed with a
    reason; `loomctl say` speaks through the sink (WAV files here)."""
    sink = tmp_path / "spoken"
    loomd_proc.write_config(
        voice_toml(models, sink='"wav"', sink_dir=f'"{sink}"', reply_timeout_s="1.0")
    )
    loomd_proc.start(timeout=60)
    clip = speech_dir / "command.wav"
    if not clip.exists():
        pytest.skip("command clip is made by the session fixture")
    p = loomctl(loomd_proc, "voice", "test", str(clip))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "kitchen lights" in p.stdout.lower()
    assert "no reply from the router" in p.stdout
    p = loomctl(loomd_proc, "say", "The garage door is closed.")
    assert p.returncode == 0, p.stderr
    assert "piper" in p.stdout
    heard = transcribe(models, read_wav(sink / "say-1.wav"))
    assert wer("The garage door is closed.", heard) == 0.0, heard
    # --wait bounds the whole turn (a slow board gives it more): this one takes over 1 s.
    p = loomctl(loomd_proc, "voice", "test", str(clip), "--wait", "0.3")
    assert p.returncode != 0 and "within 0.3 s" in p.stderr, p.stdout + p.stderr


def test_missing_model_is_named_and_the_daemon_runs(
    loomd_proc: LoomdProcess, tmp_path: Path
) -> None:
    loomd_proc.write_config(voice_toml(tmp_path / "nowhere"))
    loomd_proc.start(timeout=60)
    p = loomctl(loomd_proc, "status")
    assert p.returncode == 0, p.stderr
    assert "voice" in p.stdout
    assert "nowhere/openwakeword/hey_jarvis_v0.1.onnx is missing" in p.stdout, p.stdout
    assert loomctl(loomd_proc, "state", "put", "k", "1").returncode == 0


def test_no_speech_after_wake(loomd_proc: LoomdProcess, models: Path, speech_dir: Path) -> None:
    clip = say_wav("hey jarvis", speech_dir / "wake-only.wav", pad=(0.5, 0.5))
    loomd_proc.write_config(voice_toml(models))
    loomd_proc.start(timeout=60)
    p = loomctl(loomd_proc, "voice", "test", str(clip))
    assert "no_speech" in p.stdout, p.stdout + p.stderr


def test_through_the_real_router(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path, tmp_path: Path
) -> None:
    """The same turn with loomd's own `llm` component (SmolLM2) answering `llm.chat`."""
    llm = models / "llm" / "SmolLM2-135M-Instruct.gguf"
    loomd_proc.write_config(
        voice_toml(models) + f'[llm]\nenabled = true\nmodel = "{llm}"\nthreads = 1\n'
    )
    loomd_proc.start(timeout=90)
    out = tmp_path / "reply.wav"
    p = loomctl(loomd_proc, "voice", "test", str(command_clip), "--out", str(out), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    (turn,) = json.loads(p.stdout)["turns"]
    assert "turn on the kitchen lights" in turn["transcript"].lower(), turn
    # the whole reply (the text view shows its first line: a reply may hold several)
    reply = turn["reply"]
    assert reply, turn
    heard = transcribe(models, read_wav(out))
    assert wer(reply, heard) <= 0.35, (reply, heard)


def test_a_slow_reply_that_keeps_coming_is_not_cut(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path, llm: Responder, tmp_path: Path
) -> None:
    """`reply_timeout_s` is for a router that does not answer, not for one that streams
    slowly: with 3 s allowed and a chunk every 0.6 s, a reply of 10 chunks or more (6 s
    or more in all) is spoken whole."""
    # The router hears the command alone, as whisper writes it without the wake segment
    # (SmolLM2's reply, and so its length, depends on the exact words)
    loomd_proc.write_config(
        voice_toml(models, reply_timeout_s="3.0") + '[voice.wake]\nsecond_check = "off"\n'
    )
    loomd_proc.start(timeout=60)

    async def scenario() -> dict[str, Any]:
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            llm.ready, llm.pace_s = asyncio.Event(), 0.6
            server = asyncio.create_task(llm.serve(bus))
            try:
                async with asyncio.timeout(30):
                    await llm.ready.wait()
                llm.replied = asyncio.Event()
                r: dict[str, Any] = await bus.call(
                    "voice.test", args=[str(command_clip), str(tmp_path / "r.wav")], timeout=240
                )
                async with asyncio.timeout(120):  # the responder has sent its whole reply
                    await llm.replied.wait()
                return r
            finally:
                llm.pace_s, llm.replied = 0.0, None
                server.cancel()

    r = asyncio.run(scenario())
    turn = r["turns"][-1]
    # 10 chunks or more (a word is a token or more): twice the 3 s allowed, and more.
    assert len(llm.replies[-1].split()) >= 10, llm.replies[-1]
    assert turn["outcome"] == "ok", (turn.get("error"), turn.get("timings"), llm.replies[-1])
    assert turn["reply"] == llm.replies[-1].strip(), turn
