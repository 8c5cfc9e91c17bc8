"""Voice fixtures: model folder, speech made at test time (espeak-ng + sox), and a chat
responder that serves `llm.chat` with real llama.cpp on SmolLM2 per the loomd.messages
contract (stands in for the router until it lands)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import split_frames
from loomd.bus.api import Bus
from loomd.messages import ChatChunk, ChatDone, ChatRequest, EventType, Topic, VoiceStateEvent
from tests.conftest import first_event


async def feed_mic(bus: Bus, pcm: bytes, silence_s: float = 0.0) -> float:
    """Publish `pcm` (then `silence_s` of silence) on `audio.in.local` at a microphone's pace;
    return when the audio ended."""
    frames = split_frames(pcm + b"\0" * int(silence_s * 32000))
    began = time.monotonic()
    for i, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, began + i * 0.02 - time.monotonic()))
        await bus.publish("audio.in.local", frame, qos="realtime")
    return time.monotonic()


async def voice_state(states: Any, want: str, timeout: float) -> VoiceStateEvent:
    """The next `voice.state` event on `states` whose state is `want`, within `timeout` s."""
    return await first_event(states, VoiceStateEvent, lambda ev: ev.state == want, timeout)


def say_wav(text: str, out: Path, *, pad: tuple[float, float] = (0.5, 0.5)) -> Path:
    """Speech for `text` as 16 kHz mono s16 WAV (espeak-ng, then sox)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to make test speech")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad", *map(str, pad)],
        check=True,
    )
    raw.unlink()
    return out


def join_wavs(parts: list[Path], out: Path) -> Path:
    subprocess.run(["sox", *map(str, parts), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def command_clip(speech_dir: Path) -> Path:
    """ "hey jarvis, turn on the kitchen lights" with a short pause after the wake word."""
    wake = say_wav("hey jarvis", speech_dir / "wake.wav", pad=(0.5, 0.6))
    cmd = say_wav("turn on the kitchen lights", speech_dir / "cmd.wav", pad=(0.0, 0.8))
    return join_wavs([wake, cmd], speech_dir / "command.wav")


def voice_toml(models: Path, **extra: str) -> str:
    lines = ["[voice]", "enabled = true", f'models_dir = "{models}"']
    # These tests drive the router path; the assist's own are in tests/assist.
    extra.setdefault("agent", '"llm"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


class Responder:
    """Serves `llm.chat` over the daemon's socket with llama.cpp (SmolLM2), streaming
    `ChatChunk`s then one `ChatDone` on the request's `reply_to`."""

    def __init__(self, model_path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(str(model_path), n_ctx=1024, n_threads=1, verbose=False, seed=7)
        self.requests: list[ChatRequest] = []
        self.replies: list[str] = []

    def _stream(self, req: ChatRequest, out: asyncio.Queue[Any], loop: Any) -> None:
        msgs = [{"role": m.role, "content": m.content} for m in req.messages]
        try:
            for part in self.llm.create_chat_completion(
                msgs, max_tokens=req.max_tokens, temperature=0.0, stream=True
            ):
                text = part["choices"][0]["delta"].get("content")  # type: ignore[index]
                if text:
                    loop.call_soon_threadsafe(out.put_nowait, text)
        finally:
            loop.call_soon_threadsafe(out.put_nowait, None)

    async def serve(self, bus: Any) -> None:
        async with bus.subscribe(Topic.LLM_CHAT) as sub:
            await sub.ready()
            self.ready.set()
            async for ev in sub:
                req = ChatRequest.from_payload(ev.payload)
                self.requests.append(req)
                out: asyncio.Queue[str | None] = asyncio.Queue()
                loop = asyncio.get_running_loop()
                threading.Thread(target=self._stream, args=(req, out, loop), daemon=True).start()
                text, index = "", 0
                while (piece := await out.get()) is not None:
                    if self.pace_s:  # a slow router (a loaded board, a far cloud)
                        await asyncio.sleep(self.pace_s)
                    text += piece
                    await bus.reply(ev, ChatChunk(piece, index).to_payload(),
                                    type=EventType.LLM_CHUNK)  # fmt: skip
                    index += 1
                self.replies.append(text)
                if self.replied is not None:
                    self.replied.set()
                await bus.reply(ev, ChatDone(text, route="local", tokens=index).to_payload(),
                                type=EventType.LLM_DONE)  # fmt: skip

    ready: asyncio.Event
    replied: asyncio.Event | None = None  # set when a whole reply has been sent
    pace_s = 0.0


@pytest.fixture(scope="session")
def llm(models: Path) -> Iterator[Responder]:
    yield Responder(models / "llm" / "SmolLM2-135M-Instruct.gguf")
