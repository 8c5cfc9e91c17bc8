"""Closed-set rescoring with whisper's own decoder (loomd/audio/rescore.py in the STT worker,
loomd/assist/rescore.py in the assist): real espeak-ng speech with white noise at 10 dB,
whisper tiny.en, the example home."""

from __future__ import annotations

import asyncio
import json
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loomd.assist.intents import ACTING, plan_actions
from loomd.assist.matcher import Match, Matcher
from loomd.assist.rescore import candidates, choose, wants_rescore
from loomd.audio.io import read_wav, write_wav
from loomd.audio.stt import SttWorker
from loomd.errors import LoomdError
from loomd.home.registry import Registry, source_from_tables
from loomd.messages import HomeSnapshot, RescoreRequest
from tests.assist.conftest import EXAMPLE, home_config
from tests.audio.conftest import join_wavs, say_wav, voice_toml
from tests.bridges.conftest import Mosquitto
from tests.conftest import LoomdProcess, loomctl

pytestmark = pytest.mark.models

MARGIN = 0.5  # [assist] rescore_margin's default
# (what is said, the noise seed): whisper tiny.en hears other words at 10 dB
RECOVERED = [
    ("turn on the kitchen lights", 0),  # heard "Turn on the page and light."
    ("turn off the sofa lamp", 1),  # heard "Turn off the sofa then."
]
NOT_COMMANDS = [("I turned on the sofa lamp", 2), ("I turned on the sofa lamp", 3)]


def example_home() -> HomeSnapshot:
    reg = Registry()
    reg.set_source(source_from_tables("example", tomllib.loads(EXAMPLE.read_text())))
    return reg.snapshot()


def with_noise(pcm: bytes, seed: int, snr_db: float = 10.0) -> bytes:
    """White noise at `snr_db` below the clip's voiced samples (as bench/assist.py)."""
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    voiced = x[np.abs(x) > 100]
    sigma = np.sqrt(float(np.mean(voiced**2)) / 10 ** (snr_db / 10))
    y = x + np.random.default_rng(seed).normal(0, sigma, x.size)
    return bytes(np.clip(y, -32768, 32767).astype(np.int16).tobytes())


def noisy_clip(text: str, seed: int, out: Path) -> bytes:
    return with_noise(read_wav(say_wav(text, out, pad=(0.3, 0.3))), seed)


def acts(m: Match | None, home: HomeSnapshot) -> list[Any]:
    if m is None or m.unknown or m.intent not in ACTING:
        return []
    plans, _ = plan_actions(m, home.devices)
    return sorted((a.capability, json.dumps(a.params, sort_keys=True)) for a in plans)


@pytest.fixture(scope="module")
def home() -> HomeSnapshot:
    return example_home()


@pytest.fixture(scope="module")
def matcher(home: HomeSnapshot) -> Matcher:
    return Matcher("en", home)


@pytest.fixture(scope="module")
def worker(models: Path) -> Iterator[SttWorker]:
    """One STT worker with its scorer loaded (a process of its own, as the daemon's)."""
    w = SttWorker(str(models), "whisper/ggml-tiny.en.bin", rescore=True)
    asyncio.run(w.load())
    assert w.rescoring == "ok"
    try:
        yield w
    finally:
        w.close()


async def rescored(w: SttWorker, matcher: Matcher, heard: str) -> Match | None:
    cands = candidates(matcher, heard, 10)
    got = await w.rescore(heard, cands)
    assert len(got.scores) == len(cands)
    pick = choose(cands, list(got.scores), got.transcript, MARGIN)
    return matcher.match(pick.sentence) if pick.sentence else None


@pytest.mark.parametrize(("said", "seed"), RECOVERED)
async def test_a_10db_miss_is_recovered(
    worker: SttWorker, matcher: Matcher, home: HomeSnapshot, tmp_path: Path, said: str, seed: int
) -> None:
    want = acts(matcher.match(said), home)
    assert want
    heard = (await worker.transcribe(noisy_clip(said, seed, tmp_path / "c.wav"))).text
    plain = matcher.match(heard)
    assert acts(plain, home) != want, f"plain STT no longer misses: {heard!r}"
    assert wants_rescore(heard, plain)
    assert acts(await rescored(worker, matcher, heard), home) == want, heard


@pytest.mark.parametrize(("said", "seed"), NOT_COMMANDS)
async def test_a_statement_is_not_forced_onto_a_command(
    worker: SttWorker, matcher: Matcher, home: HomeSnapshot, tmp_path: Path, said: str, seed: int
) -> None:
    heard = (await worker.transcribe(noisy_clip(said, seed, tmp_path / "c.wav"))).text
    plain = matcher.match(heard)
    assert not acts(plain, home)
    if wants_rescore(heard, plain):  # the closest commands are scored, and refused
        assert not acts(await rescored(worker, matcher, heard), home), heard


async def test_scores_rank_what_was_said_first(worker: SttWorker, tmp_path: Path) -> None:
    """Forced decoding against a clean clip: what was said scores best, near whisper's own
    transcript; other sentences of the home score lower, the further the lower."""
    pcm = read_wav(say_wav("turn off the sofa lamp", tmp_path / "c.wav", pad=(0.3, 0.3)))
    heard = (await worker.transcribe(pcm)).text
    said = "turn off the sofa lamp"
    others = ["turn on the sofa lamp", "turn off the bedside lamp", "what is the hall temperature"]
    got = await worker.rescore(heard, [said, *others])
    assert got.scores[0] == max(got.scores)
    assert got.scores[0] > got.transcript - 0.3
    assert got.scores[3] < got.scores[1] - 1.0
    assert got.ms > 0


async def test_rescore_before_any_clip_fails_clearly(models: Path) -> None:
    w = SttWorker(str(models), "whisper/ggml-tiny.en.bin")  # the scorer loads when needed
    await w.load()
    try:
        assert w.rescoring == "off"
        with pytest.raises(LoomdError, match="nothing was transcribed"):
            await w.rescore("turn on", ["turn on the kitchen lights"])
        await w.transcribe(b"\0" * 16000)
        got = await w.rescore("", ["turn on the kitchen lights"])  # loaded now
        assert len(got.scores) == 1
    finally:
        w.close()


def test_requests_are_checked() -> None:
    with pytest.raises(LoomdError, match="utterance_id"):
        RescoreRequest("", "x", ("turn on the kitchen lights",))
    with pytest.raises(LoomdError, match="1-64 sentences"):
        RescoreRequest("u1", "x", ())


def test_negations_and_refusals_are_never_rescored() -> None:
    assert not wants_rescore("don't turn on the kitchen lights", None)
    assert not wants_rescore("No turn on the kitchen lights.", None)  # 10 dB "don't ..."
    assert wants_rescore("Turn on the page and light.", None)


async def test_the_daemon_rescores_a_noisy_command(
    short_tmp: Path, broker: Mosquitto, models: Path, tmp_path: Path
) -> None:
    """`voice test` on "hey jarvis" + a 10 dB command whisper mishears, with `[assist]
    rescore = true`: the assist asks `voice.rescore`, the lights' commands reach the
    broker; a statement about a lamp in the same noise acts on nothing."""
    root = short_tmp / "d"
    root.mkdir()
    conf = home_config(broker, "rescore = true\n")
    d = LoomdProcess(root, conf + voice_toml(models, agent='"assist"', sink='"buffer"'))
    (root / "home.d").mkdir()
    shutil.copy(EXAMPLE, root / "home.d" / "home.toml")
    wake = say_wav("hey jarvis", tmp_path / "wake.wav", pad=(0.5, 0.6))
    clips = {}
    for name, (said, seed) in (("cmd", RECOVERED[0]), ("statement", NOT_COMMANDS[0])):
        cmd = tmp_path / f"{name}.wav"
        write_wav(cmd, noisy_clip(said, seed, tmp_path / f"{name}.raw.wav") + b"\0" * 16000)
        clips[name] = join_wavs([wake, cmd], tmp_path / f"{name}.turn.wav")
    try:
        d.start(timeout=90)
        turns = {}
        with broker.sub("home/+/+/set") as sub:
            await sub.ready()
            for name, clip in clips.items():
                p = loomctl(d, "voice", "test", str(clip), "--json", timeout=300)
                assert p.returncode == 0, p.stdout + p.stderr + d.log.read_text()[-3000:]
                turns[name] = json.loads(p.stdout)["turns"][0]
            got = await sub.wait(2)
        cmd, statement = turns["cmd"], turns["statement"]
        assert "rescored" in cmd["timings"], cmd
        assert [a["code"] for a in cmd["actions"]] == ["ok", "ok"], cmd
        assert not statement["actions"], statement
        assert sorted(got) == ["home/kitchen/ceiling/set ON", "home/kitchen/counter/set ON"], got
    finally:
        d.close()
