"""A command said straight after the wake word, on the real daemon (issue 18, voice).

Each clip is "hey jarvis" and a command, either at once (no pause: espeak-ng's two clips
trimmed and joined, Piper's "Hey Jarvis what time is it" in one breath) or after a pause
(`PAUSE_S` of silence between), fed to `voice.test` on a real daemon (the front end,
openWakeWord, the wake check, the segmenter, whisper tiny.en; no agent). A clip scores as
`full` when the turn's transcript is the command, word for word; `first` when it opens
with the command's first word; `leak` when a word of the wake phrase is in it.

The baseline is the same daemon on another tree (`--base`: a checkout of the code before
the change), in the same run: the utterance then opened where the wake score crossed.

    PYTHONPATH=$PWD python -m bench.atonce --base /path/to/checkout [--quick]

Keys (one JSON line at the end): `full_`, `first_`, `leak_` and `turns_` (a turn at all)
with `at_once` and `pause` (shares of all the clips of the form, this tree), the same with
`base_`, and `same_pause` (the share of pause clips with the same transcript on both
trees). Piper's clips are synthesised afresh each run (its noise): compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.falsewake import piper_styled
from bench.harness import REPO, daemon_config, need_test_models, spawn_daemon, wait_daemon_op
from bench.tvnoise import espeak_pcm, trim
from loomd.audio.frames import RATE
from loomd.audio.io import write_wav

VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m4", "en-gb-x-rp", "en-029"]
COMMANDS = ["what time is it", "turn off the bedroom lights", "play some jazz",
            "open the garage door", "how is the weather today"]  # fmt: skip
PAUSE_S = 0.8
WAKE_WORDS = {"hey", "jarvis"}


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()


def clips(models: Path, quick: bool) -> list[tuple[str, str, str, bytes]]:
    """(form, label, command, pcm): each clip at once and with a pause."""
    out = []
    silence = b"\0" * int(0.4 * RATE) * 2
    pause = b"\0" * int(PAUSE_S * RATE) * 2
    voices = VOICES[:3] if quick else VOICES
    for i, voice in enumerate(voices):
        for j, cmd in enumerate(COMMANDS):
            if quick and j % 2 != i % 2:
                continue
            wake, said = trim(espeak_pcm("hey jarvis", voice)), trim(espeak_pcm(cmd, voice))
            out.append(("at_once", voice, cmd, silence + wake + said))
            out.append(("pause", voice, cmd, silence + wake + pause + said))
    say = piper_styled(models)
    if say is not None:
        style = (1.0, 0.667, 0.8)  # the voice's own
        for cmd in COMMANDS[:3] if quick else COMMANDS:
            out.append(("at_once", "piper", cmd, silence + trim(say(f"Hey Jarvis {cmd}", style))))
            out.append(("pause", "piper", cmd, silence + trim(say("Hey Jarvis.", style)) + pause
                        + trim(say(cmd, style))))  # fmt: skip
    return out


def run_tree(tree: Path, made: list[tuple[str, str, str, Path]], models: Path) -> list[str | None]:
    """Each clip through `voice.test` on a daemon running the code in `tree`: its turn's
    transcript (None: no turn, or not "ok")."""
    from loomd.sdk import Client

    root = Path(tempfile.mkdtemp(prefix="atonce-", dir="/tmp"))
    conf = daemon_config(root, "[metrics]\nenabled = false\n[voice]\nenabled = true\n"
                         f'models_dir = "{models}"\nagent = "none"\nsink = "buffer"\n')  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = spawn_daemon(conf, env=env, cwd=str(tree))

    async def go() -> list[str | None]:
        endpoint = f"ipc://{root}/run/bus.sock"
        await wait_daemon_op(endpoint, "voice.last", 90)
        out: list[str | None] = []
        async with Client(endpoint, name="bench", timeout=10) as bus:
            for _form, _label, _cmd, wav in made:
                r = await bus.call("voice.test", args=[str(wav)], timeout=240)
                ok = [t for t in r["turns"] if t.get("outcome") == "ok"]
                out.append(ok[0].get("transcript", "") if ok else None)
        return out

    try:
        return asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)


def score(
    made: list[tuple[str, str, str, Path]], got: list[str | None], form: str
) -> dict[str, float]:
    rows = [(c, g) for (f, _, c, _), g in zip(made, got, strict=True) if f == form]
    n = len(rows) or 1
    full = sum(1 for c, g in rows if g is not None and words(g) == words(c))
    first = sum(1 for c, g in rows if g is not None and words(g)[:1] == words(c)[:1])
    leak = sum(1 for _, g in rows if g is not None and WAKE_WORDS & set(words(g)))
    turns = sum(1 for _, g in rows if g is not None)
    return {"full": round(full / n, 3), "first": round(first / n, 3),
            "leak": round(leak / n, 3), "turns": round(turns / n, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="a checkout of the code before the change")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    models = need_test_models()
    tmp = Path(tempfile.mkdtemp(prefix="atonce-clips-"))
    try:
        made = []
        for k, (form, label, cmd, pcm) in enumerate(clips(models, args.quick)):
            wav = tmp / f"{k}.wav"
            write_wav(wav, pcm + b"\0" * int(2.0 * RATE) * 2)
            made.append((form, label, cmd, wav))
        base = run_tree(Path(args.base).resolve(), made, models)
        this = run_tree(REPO, made, models)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'form':8} {'voice':11} {'command':28} {'base':34} this")
    for (form, label, cmd, _), b, t in zip(made, base, this, strict=True):
        print(f"{form:8} {label:11} {cmd:28} {b!s:34} {t}")
    out: dict[str, Any] = {"bench": "atonce", "clips": len(made), "pause_s": PAUSE_S}
    for form in ("at_once", "pause"):
        for key, v in score(made, this, form).items():
            out[f"{key}_{form}"] = v
        for key, v in score(made, base, form).items():
            out[f"base_{key}_{form}"] = v
    pauses = [(b, t) for (f, *_), b, t in zip(made, base, this, strict=True) if f == "pause"]
    out["same_pause"] = round(sum(1 for b, t in pauses if b == t) / (len(pauses) or 1), 3)
    with os.popen("uptime") as up:
        out["load"] = up.read().strip().split("load average:")[-1].strip()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
