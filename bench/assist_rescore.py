"""Closed-set rescoring (issue 16, 10 dB): the bench's clips through loomd's STT stage with
rescoring on (`SttWorker(rescore=True)`), then the matcher; where the assist would rescore
(no match, a repair, an unknown target; never a negation), the home's closest sentences are
scored by whisper's own decoder (loomd/assist/rescore.py, loomd/audio/rescore.py).

Called by bench/assist.py (its keys `*_rescore`, `rescore_ms_p50`, the margin sweep);
alone, `.venv/bin/python bench/assist_rescore.py [--quick]` prints the same keys and each
rescored clip (for reading the margins)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomd.assist.rescore import candidates, choose, wants_rescore
from loomd.assist.settings import AssistSettings

MARGINS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def measure(
    clips: list[tuple[str, str, Any, str, bytes]],
    matcher: Any,
    home: Any,
    models: Path,
    noisy: Any,
    outcome: Any,
    expected: Any,
    verbose: bool = False,
) -> dict[str, Any]:
    """`clips`: (text, kind, want, voice, pcm) as bench/assist.py makes them."""
    from loomd.audio.stt import SttWorker

    s = AssistSettings()
    worker = SttWorker(str(models), "whisper/ggml-tiny.en.bin", threads=1, rescore=True)
    rows: list[dict[str, Any]] = []

    async def run(pcms: list[bytes], label: str) -> None:
        if worker.pid is None:
            await worker.load()
            if worker.rescoring != "ok":
                raise SystemExit(f"rescoring is not available: {worker.rescoring}")
        for (text, kind, want, voice, _), pcm in zip(clips, pcms, strict=True):
            heard = (await worker.transcribe(pcm)).text
            m = matcher.match(heard)
            row = {"label": label, "voice": voice, "text": text, "kind": kind,
                   "heard": heard, "want": expected(kind, want), "plain": outcome(m, home),
                   "scored": None}  # fmt: skip
            if wants_rescore(heard, m):
                cands = candidates(matcher, heard, s.rescore_candidates)
                if cands:  # as the daemon asks (timed), then every score exact (the sweep)
                    timed = await worker.rescore(heard, cands, s.rescore_margin)
                    got = await worker.rescore(heard, cands)
                    row["scored"] = (got.transcript, cands, list(got.scores), timed.ms)
                    pick, exact = (choose(cands, list(x.scores), x.transcript, s.rescore_margin)
                                   for x in (timed, got))  # fmt: skip
                    assert pick.sentence == exact.sentence, (heard, pick, exact)
            rows.append(row)

    for label, snr in (("clean", None), ("10db", 10.0)):
        asyncio.run(run([noisy(c[4], snr, j) for j, c in enumerate(clips)], label))
    worker.close()
    if os.environ.get("BENCH_RESCORE_ROWS"):  # every clip, for reading the margins offline
        Path(os.environ["BENCH_RESCORE_ROWS"]).write_text(json.dumps(rows, default=str))

    def result(row: dict[str, Any], margin: float) -> Any:
        if row["scored"] is None:
            return row["plain"]
        own, cands, scores, _ms = row["scored"]
        pick = choose(cands, scores, own, margin)
        if not pick.sentence:
            return row["plain"]
        r = matcher.recognize(pick.sentence)
        return outcome(matcher._to_match(r, row["heard"], fuzzy=True), home) if r else row["plain"]

    def figures(margin: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label in ("clean", "10db"):
            mine = [r for r in rows if r["label"] == label]
            out[f"audio_accuracy_{label}_rescore"] = round(
                sum(result(r, margin) == r["want"] for r in mine) / len(mine), 3
            )
            out[f"audio_accuracy_{label}_rescore_pass"] = round(
                sum(r["plain"] == r["want"] for r in mine) / len(mine), 3
            )  # the same pass without rescoring (equals audio_accuracy_<label>)
        out["false_actions_rescore"] = sum(
            isinstance(result(r, margin), list) and bool(result(r, margin))
            for r in rows
            if r["kind"] == "no"
        )
        return out

    # Where a margin can sit: whisper's own transcript's score minus the best candidate's,
    # on clips where taking the best would be right, and where it would act wrongly.
    right_gaps, wrong_gaps = [], []
    for r in rows:
        if r["scored"] is None:
            continue
        own, cands, scores, _ = r["scored"]
        gap = own - max(scores)
        taken = result(r, 99.0)
        if taken == r["want"] and r["plain"] != r["want"]:
            right_gaps.append(gap)
        elif taken != r["want"] and isinstance(taken, list) and taken:
            wrong_gaps.append(gap)
            print(f"rescore would act wrongly from margin {gap:.2f} ({r['label']}, {r['voice']},"
                  f" {r['kind']}): {r['text']!r} heard {r['heard']!r} -> "
                  f"{cands[scores.index(max(scores))]!r}", file=sys.stderr)  # fmt: skip
    res = figures(s.rescore_margin)
    res["rescore_gaps_recovering"] = sorted(round(g, 2) for g in right_gaps)
    res["rescore_gap_wrong_min"] = round(min(wrong_gaps), 2) if wrong_gaps else None
    res["rescore_margin"] = s.rescore_margin
    res["rescore_sweep"] = {str(m): figures(m) for m in MARGINS}
    ms = [r["scored"][3] for r in rows if r["scored"] is not None]
    res["rescored_clips"] = len(ms)
    res["rescore_ms_p50"] = round(statistics.median(ms), 1) if ms else None
    res["rescore_candidates_p50"] = (
        statistics.median(len(r["scored"][1]) for r in rows if r["scored"]) if ms else None
    )
    for r in rows:
        if r["scored"] is None:
            continue
        own, cands, scores, _ = r["scored"]
        best = max(range(len(cands)), key=lambda i: scores[i])
        right = result(r, s.rescore_margin) == r["want"]
        ok = "ok " if right else "BAD"
        if verbose or not right:
            print(f"rescore {ok} ({r['label']}, {r['voice']}, {r['kind']}): {r['text']!r} heard "
                  f"{r['heard']!r} {own:.2f} -> {cands[best]!r} {scores[best]:.2f}"
                  f" (right one {'in' if _in(r, cands, matcher, home, outcome) else 'NOT in'})",
                  file=sys.stderr)  # fmt: skip
    return res


def _in(row: dict[str, Any], cands: list[str], matcher: Any, home: Any, outcome: Any) -> bool:
    for c in cands:
        r = matcher.recognize(c)
        if r is not None and outcome(matcher._to_match(r, c), home) == row["want"]:
            return True
    return False


def main() -> None:
    from bench import assist as b

    quick = "--quick" in sys.argv
    home = b.home_snapshot().snapshot()
    from loomd.assist.matcher import Matcher
    from loomd.audio.tts import PiperTts

    matcher = Matcher("en", home, b.CAPS)
    cases = [b.COMMANDS[i] for i in b.QUICK_PICK] if quick else b.COMMANDS
    piper = PiperTts(str(b.MODELS), "piper/en_US-joe-medium.onnx")
    tmp = Path(tempfile.mkdtemp(prefix="bar-"))
    clips = []
    for i, (t, k, w) in enumerate(cases):
        pad = b"\0" * 9600
        clips.append((t, k, w, "piper", pad + piper.synthesize(t) + pad))
        clips.append((t, k, w, "espeak", b.espeak(t, tmp / f"e{i}.wav")))
    res = {"bench": "assist_rescore", "quick": quick, "cases": len(cases)}
    res.update(measure(clips, matcher, home, b.MODELS, b.noisy, b.outcome, b.expected,
                       verbose="-v" in sys.argv))  # fmt: skip
    print(json.dumps(res))


if __name__ == "__main__":
    main()
