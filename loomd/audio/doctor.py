"""The voice component's doctor check: the sound cards and PyAudio devices it would open
(contributed through `loomd.components.BUILTIN_DOCTOR`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loomd.doctor.context import Check, Context, Verdict, component_on, ok, skip, warn

RATE = 16000


def sound_cards(root: Path) -> list[str]:
    """Card names from /proc/asound/cards (` 0 [Headphones ]: bcm2835 - bcm2835 ...`)."""
    try:
        text = (root / "proc/asound/cards").read_text()
    except OSError:
        return []
    cards = []
    for line in text.splitlines():
        head, sep, desc = line.partition("]: ")
        if sep and head.strip()[:1].isdigit():
            cards.append(desc.split(" - ", 1)[-1].strip() or head.split("[", 1)[-1].strip())
    return cards


def _pyaudio_devices() -> tuple[list[str], list[str]]:
    """Input and output devices that accept 16 kHz mono s16 (what the voice pipeline opens)."""
    import pyaudio  # type: ignore[import-untyped]

    ins, outs = [], []
    with _quiet_stderr():  # ALSA and JACK print dozens of lines while PortAudio looks around
        pa = pyaudio.PyAudio()
        try:
            for i in range(pa.get_device_count()):
                info = pa.get_device_info_by_index(i)
                name = str(info.get("name", i))
                if int(info.get("maxInputChannels", 0)) > 0 and _supported(pa, pyaudio, i, True):
                    ins.append(name)
                if int(info.get("maxOutputChannels", 0)) > 0 and _supported(pa, pyaudio, i, False):
                    outs.append(name)
        finally:
            pa.terminate()
    return ins, outs


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """fd 2 to /dev/null: the C libraries write there directly, below Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _supported(pa: Any, pyaudio: Any, index: int, inp: bool) -> bool:
    kw = (
        {"input_device": index, "input_channels": 1, "input_format": pyaudio.paInt16}
        if inp
        else {"output_device": index, "output_channels": 1, "output_format": pyaudio.paInt16}
    )
    try:
        return bool(pa.is_format_supported(RATE, **kw))
    except ValueError:  # PyAudio raises instead of returning False
        return False


def check_audio(ctx: Context) -> Verdict:
    voice = ctx.section("voice")
    on, why = component_on(ctx, "voice")
    if not on:
        return skip(f"voice is off: {why}")
    cards = sound_cards(ctx.hw_root)
    cards_text = f"cards: {', '.join(cards)}" if cards else "no sound cards in /proc/asound/cards"
    needs_mic, needs_spk = voice.source == "mic", voice.sink == "speaker"
    if importlib.util.find_spec("pyaudio") is None:
        if needs_mic or needs_spk:
            return warn(
                f"{cards_text}; PyAudio is not installed (source/sink use it)",
                "sudo apt install loomd-voice (or pip install 'loomd[voice]')",
            )
        return ok(f"{cards_text}; source {voice.source}, sink {voice.sink} (no PyAudio needed)")
    ins, outs = _pyaudio_devices()
    found = f"{cards_text}; 16 kHz mono: {len(ins)} input(s), {len(outs)} output(s)"
    lacks = []
    if needs_mic and not _matching(ins, voice.mic.device):
        lacks.append("microphone" + (f" matching {voice.mic.device!r}" if voice.mic.device else ""))
    if needs_spk and not outs:
        lacks.append("speaker")
    if lacks:
        return warn(
            f"{found}; no {' or '.join(lacks)} accepting 16 kHz mono",
            "plug in a USB microphone/speaker; list them with: arecord -l; aplay -l; "
            "set [voice.mic] device to part of its name",
        )
    detail = ", ".join([*(f"in: {n}" for n in ins[:2]), *(f"out: {n}" for n in outs[:2])])
    return ok(found + (f" ({detail})" if detail else ""))


def _matching(names: list[str], want: str) -> bool:
    return any(want.lower() in n.lower() for n in names) if want else bool(names)


CHECKS = (Check("audio", check_audio, 10.0),)
