"""Assist: spoken and typed commands to actions, against raw whisper.cpp + raw hassil.

    .venv/bin/python bench/assist.py [--quick] [--sweep]

A fixture home (15 devices in 5 areas, 3 capabilities with sentences) and a command set
made here: commands, questions, out-of-grammar requests (for the model) and distractors that
must not act. Each is spoken by Piper (joe) and espeak-ng, clean and with white noise at
10 dB, then understood two ways: loomd (its STT stage as the daemon runs it, then the
matcher with transcript cleaning, name repair and phrase repair) and raw (pywhispercpp with
the same audio_ctx, then hassil alone). The clean clips also go through loomd's STT with
the home's names as whisper's prompt (automatic vocabulary, off by default). A clip is
right when the plan (broker calls with their arguments; the intent for questions; nothing
for distractors and out-of-grammar) is the
expected one. Then the real daemon (mosquitto, home, assist, voice) runs `voice.test` on
"hey jarvis, <command>" clips: end of speech -> action done (the command durable in the MQTT
bridge's outbox) and -> first reply audio. The clips again with closed-set rescoring
(bench/assist_rescore.py: `*_rescore`, `rescore_ms_p50`). Ends with one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import daemon_config, small_models_dir, spawn_daemon
from loomd.assist.intents import ACTING, plan_actions
from loomd.assist.matcher import Match, Matcher
from loomd.audio.io import read_wav
from loomd.audio.settings import FrontendSettings
from loomd.audio.stt import SttWorker, audio_ctx_for, clean_text
from loomd.home.registry import Registry, source_from_tables

QUICK = "--quick" in sys.argv
SWEEP = "--sweep" in sys.argv  # also every noise suppression level and auto gain
MODELS = small_models_dir()

HOME_TOML = """
[[areas]]
id = "kitchen"
name = "Kitchen"
[[areas]]
id = "living_room"
name = "Living Room"
aliases = ["lounge"]
[[areas]]
id = "bedroom"
name = "Bedroom"
[[areas]]
id = "office"
name = "Office"
[[areas]]
id = "garage"
name = "Garage"
"""
DEVICES = [  # id, name, area, domain, aliases
    ("kitchen_ceiling", "kitchen ceiling light", "kitchen", "light", []),
    ("kitchen_counter", "counter light", "kitchen", "light", []),
    ("coffee_maker", "coffee maker", "kitchen", "switch", []),
    ("sofa_lamp", "sofa lamp", "living_room", "light", ["reading lamp"]),
    ("tv", "television", "living_room", "media_player", ["TV"]),
    ("blinds", "living room blinds", "living_room", "cover", []),
    ("thermostat", "thermostat", "living_room", "climate", []),
    ("bedside_lamp", "bedside lamp", "bedroom", "light", []),
    ("bedroom_fan", "ceiling fan", "bedroom", "fan", []),
    ("wardrobe_light", "wardrobe light", "bedroom", "light", []),
    ("desk_lamp", "desk lamp", "office", "light", []),
    ("office_heater", "space heater", "office", "switch", []),
    ("garage_door", "garage door", "garage", "cover", []),
    ("side_door", "side door", "garage", "lock", []),
    ("garage_temp", "garage temperature", "garage", "sensor", []),
]
WATER = {
    "zone": {"enum": ["front", "back", "vegetable"]},
    "minutes": {"type": "integer", "minimum": 1, "maximum": 60},
}
CAPS = [
    {"name": "garden.water", "version": 1,
     "sentences": ["water the {zone} garden [for {minutes} minutes]"],
     "schema": {"type": "object", "properties": WATER}},
    {"name": "music.play", "version": 1, "sentences": ["play [some] {genre} [music]"],
     "schema": {"type": "object",
                "properties": {"genre": {"enum": ["jazz", "rock", "classical"]}}}},
    {"name": "feeder.feed", "version": 1, "sentences": ["feed the {pet}"],
     "schema": {"type": "object", "properties": {"pet": {"enum": ["cat", "dog"]}}}},
]  # fmt: skip


def on(dev: str) -> list[tuple[str, dict[str, Any]]]:
    return [("home.turn_on", {"device": dev})]


def off(dev: str) -> list[tuple[str, dict[str, Any]]]:
    return [("home.turn_off", {"device": dev})]


# (text, kind, expected): "act" -> the broker calls; "ask" -> (intent, slots); "no" -> none
COMMANDS: list[tuple[str, str, Any]] = [
    ("turn on the kitchen lights", "act", on("kitchen_ceiling") + on("kitchen_counter")),
    ("turn off the sofa lamp", "act", off("sofa_lamp")),
    ("turn on the reading lamp", "act", on("sofa_lamp")),
    ("switch on the coffee maker", "act", on("coffee_maker")),
    ("set the bedside lamp to 30 percent", "act",
     [("home.light_set", {"device": "bedside_lamp", "brightness": 30})]),
    ("open the garage door", "act", on("garage_door")),
    ("close the living room blinds", "act", off("blinds")),
    ("set the temperature to 21 degrees", "act",
     [("home.climate_set_temperature", {"device": "thermostat", "temperature": 21.0})]),
    ("turn off the ceiling fan", "act", off("bedroom_fan")),
    ("turn on the desk lamp", "act", on("desk_lamp")),
    ("turn off the space heater", "act", off("office_heater")),
    ("lock the side door", "act", [("home.lock", {"device": "side_door"})]),
    ("water the back garden for 10 minutes", "act",
     [("garden.water", {"zone": "back", "minutes": 10})]),
    ("play some jazz", "act", [("music.play", {"genre": "jazz"})]),
    ("feed the cat", "act", [("feeder.feed", {"pet": "cat"})]),
    ("turn off the wardrobe light", "act", off("wardrobe_light")),
    ("turn on the television", "act", on("tv")),
    ("turn off the lights in the bedroom", "act", off("bedside_lamp") + off("wardrobe_light")),
    ("what is the garage temperature", "ask", ("HassGetState", {"name": "garage_temp"})),
    ("is the side door locked", "ask", ("HassGetState", {"name": "side_door"})),
    ("what time is it", "ask", ("HassGetCurrentTime", {})),
    ("set a timer for 5 minutes", "ask", ("HassStartTimer", {"minutes": 5})),
    ("tell me a joke", "no", None),
    ("what is the capital of France", "no", None),
    ("how do I make pancakes", "no", None),
    ("turn on the garage lights", "no", None),  # the garage has no light
    ("turn on the kitchen fan", "no", None),  # the kitchen has no fan
    ("open the front gate", "no", None),
    ("turn on the hallway light", "no", None),
    ("I left the desk lamp on yesterday", "no", None),
    # one edit from a command: a repair must not drop the word that makes them no command
    ("don't turn on the kitchen lights", "no", None),
    ("I turned on the desk lamp", "no", None),
    ("the office needs some light", "no", None),  # no command, no device: the model's
]  # fmt: skip
# Out of grammar, for the model with tools: (text, (capability, device) or None: must not act)
LLM_CASES = [
    ("it is too dark to read on the sofa", ("home.turn_on", "sofa_lamp")),
    ("the office needs some light", ("home.turn_on", "desk_lamp")),
    ("I am freezing in the living room", ("home.climate_set_temperature", "thermostat")),
    ("tell me a joke", None),
]
QUICK_PICK = [0, 1, 2, 4, 7, 12, 18, 21, 25, 29, 30]


def home_snapshot() -> Any:
    import tomllib

    table = tomllib.loads(HOME_TOML)
    table["devices"] = [
        {"id": i, "name": n, "area": a, "domain": d, "aliases": al,
         **({"state_topic": f"bench/{i}/state"} if d == "sensor" else
            {"command_topic": f"bench/{i}/set"}),
        **({"brightness_template": "{value}"} if d == "light" else {}),
        **({"temperature_template": "{value}"} if d == "climate" else {})}
        for i, n, a, d, al in DEVICES
    ]  # fmt: skip
    reg = Registry()
    reg.set_source(source_from_tables("bench", table))
    return reg


def outcome(m: Match | None, home: Any) -> Any:
    """What the assist would do: broker calls (sorted), an intent for non-acting ones, or
    nothing."""
    if m is None or m.unknown:
        return None
    if m.intent.startswith("cap:"):
        return [(m.intent[4:], {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                                for k, v in m.slots.items()})]  # fmt: skip
    if m.intent in ACTING:
        plans, _ = plan_actions(m, home.devices)
        return sorted(((a.capability, a.params) for a in plans), key=repr) or None
    slots = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
             for k, v in m.slots.items() if k in ("name", "minutes")}  # fmt: skip
    return (m.intent, slots)


def expected(kind: str, want: Any) -> Any:
    if kind == "act":
        return sorted(want, key=repr)
    return want


def acts(m: Match | None, home: Any) -> bool:
    out = outcome(m, home)
    return isinstance(out, list) and bool(out)


def raw_match(matcher: Matcher, text: str) -> Match | None:
    r = matcher.recognize(text)
    return matcher._to_match(r, text) if r is not None else None


# --- speech -----------------------------------------------------------------------------------
def espeak(text: str, out: Path) -> bytes:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad",
                    "0.3", "0.3"], check=True)  # fmt: skip
    return read_wav(out)


def noisy(pcm: bytes, snr_db: float | None, seed: int, lead_s: float = 0.0) -> bytes:
    """`pcm` with white noise at `snr_db` (over its voiced samples), after `lead_s` of the
    same noise alone (its own draw: the clip's part is the same with or without a lead)."""
    lead = int(lead_s * 16000)
    if snr_db is None:
        return b"\0" * (2 * lead) + pcm
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    voiced = x[np.abs(x) > 100]
    p_sig = float(np.mean(voiced**2)) if voiced.size else 1.0
    sigma = np.sqrt(p_sig / 10 ** (snr_db / 10))
    y = x + np.random.default_rng(seed).normal(0, sigma, x.size)
    if lead:
        y = np.concatenate([np.random.default_rng(seed + 1_000_003).normal(0, sigma, lead), y])
    return bytes(np.clip(y, -32768, 32767).astype(np.int16).tobytes())


# The daemon's front end has heard the room before anyone speaks: each clip goes through a
# fresh stage after this much of the same noise (the output's lead is dropped).
FRONTEND_LEAD_S = 1.0


def through_frontend(
    pcm: bytes, ns: int, agc: int, spent: list[float], *, drop_lead: bool = True
) -> bytes:
    """A clip made by `noisy(..., lead_s=FRONTEND_LEAD_S)` through loomd's front end stage
    (the class the daemon runs), frame by frame; the lead is dropped. Adds the seconds spent
    per 20 ms frame to `spent`."""
    from loomd.audio.frames import FRAME_BYTES
    from loomd.audio.frontend import FrontEnd

    stage = FrontEnd(ns, agc)
    n = len(pcm)
    pcm += b"\0" * (-n % FRAME_BYTES)
    out = []
    for i in range(0, len(pcm), FRAME_BYTES):
        a = time.perf_counter()
        out.append(stage.process(pcm[i : i + FRAME_BYTES]))
        spent.append(time.perf_counter() - a)
    return b"".join(out)[int(FRONTEND_LEAD_S * 16000) * 2 if drop_lead else 0 : n]


def frontend_variants() -> list[tuple[str, int, int]]:
    """("frontend", the default [voice.frontend] settings) and, with --sweep, the others.
    The STT cases measure what `[voice.frontend] stt = true` would give (off by default:
    see docs/design/voice.md); with the front end off, the measured setting is level 2."""
    fs = FrontendSettings()
    ns, agc = (fs.noise_suppression, fs.auto_gain) if fs.enabled else (2, 0)
    out = [("frontend", ns, agc)]
    if SWEEP:
        out += [(f"ns{n}", n, 0) for n in (1, 2, 3, 4) if (n, 0) != (ns, agc)]
        out += [(f"ns{ns}_agc3", ns, 3), ("agc3", 0, 3)]
    return out


def wake_effect(tmp: Path, piper: Any, ns: int, agc: int) -> dict[str, Any]:
    """openWakeWord (loomd's WakeDetector) on "hey jarvis" (Piper and espeak-ng, 10 noise
    draws each) at 10 dB, with and without the front end: recall at the default threshold
    and the mean peak score. webrtcvad (loomd's WebRtcVad, the default mode) on the same
    clips, a fresh one per clip: the share of noise-only frames it calls speech (the last
    half of the lead, once both have heard the room) and of the words' frames it calls
    speech."""
    from loomd.audio.frames import FRAME_BYTES
    from loomd.audio.settings import VadSettings
    from loomd.audio.vad import WebRtcVad
    from loomd.audio.wake import WakeDetector

    det = WakeDetector(str(MODELS), ("openwakeword/hey_jarvis_v0.1.onnx",))
    pad = b"\0" * 16000
    words = [pad + piper.synthesize("hey jarvis") + pad, espeak("hey jarvis", tmp / "hj.wav")]

    def peak(pcm: bytes) -> float:
        det.reset()
        det.process(pcm, len(pcm) / 32000, threshold=1.1)
        best = det.peak
        det.peak = 0.0
        return best

    def frames(pcm: bytes) -> list[bytes]:
        return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]

    def loud(pcm: bytes) -> list[bool]:
        e = [
            float(np.mean(np.frombuffer(f, np.int16).astype(np.float64) ** 2)) for f in frames(pcm)
        ]
        return [x > max(e) / 100 for x in e]  # within 20 dB of the loudest frame

    lead_frames = int(FRONTEND_LEAD_S * 1000) // 20
    out: dict[str, Any] = {}
    for label, snr in (("clean", None), ("10db", 10.0)):
        raw, fe = [], []
        vad_noise: dict[str, list[bool]] = {"": [], "_frontend": []}
        vad_speech: dict[str, list[bool]] = {"": [], "_frontend": []}
        for j in range(1 if snr is None else 10):
            for w in words:
                lead = noisy(w, snr, 7000 + j, FRONTEND_LEAD_S)
                raw.append(peak(lead[int(FRONTEND_LEAD_S * 32000) :]))
                full = through_frontend(lead, ns, agc, [], drop_lead=False)
                fe.append(peak(full[int(FRONTEND_LEAD_S * 32000) :]))
                words_loud = loud(w)
                for name, pcm in (("", lead), ("_frontend", full)):
                    vad = WebRtcVad(VadSettings().mode)  # one per stream: it adapts
                    flags = [vad(f) for f in frames(pcm)]
                    vad_noise[name] += flags[lead_frames // 2 : lead_frames]
                    said = flags[lead_frames:]
                    vad_speech[name] += [v for v, x in zip(said, words_loud, strict=False) if x]
        for name, scores in (("", raw), ("_frontend", fe)):
            hits = sum(s >= 0.5 for s in scores)
            out[f"wake_recall_{label}{name}"] = round(hits / len(scores), 3)
            out[f"wake_peak_mean_{label}{name}"] = round(statistics.mean(scores), 3)
            if snr is not None:
                noise, speech = vad_noise[name], vad_speech[name]
                out[f"vad_speech_on_noise_{label}{name}"] = round(sum(noise) / len(noise), 3)
                out[f"vad_speech_on_words_{label}{name}"] = round(sum(speech) / len(speech), 3)
    return out


def pctl(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


# A German home: the phrase set's figures here, the German board's tests (tests/assist/)
HOME_DE_TOML = """
[[areas]]
id = "kueche"
name = "Küche"
[[areas]]
id = "bad"
name = "Bad"
[[devices]]
id = "kuechenlicht"
name = "Deckenlicht"
area = "kueche"
domain = "light"
command_topic = "home/kueche/licht/set"
[[devices]]
id = "badlicht"
name = "Spiegellicht"
area = "bad"
domain = "light"
command_topic = "home/bad/licht/set"
"""


def phrase_set(home: Any) -> dict[str, Any]:
    """The closed set phrase repair and rescoring choose from: its size and build time (best
    of 3), for this home in English and a two-room home in German."""
    import tomllib

    reg = Registry()
    reg.set_source(source_from_tables("bench-de", tomllib.loads(HOME_DE_TOML)))
    out: dict[str, Any] = {}
    for lang, h, caps in (("en", home, CAPS), ("de", reg.snapshot(), [])):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            m = Matcher(lang, h, caps)
            times.append(time.perf_counter() - t0)
        out[f"phrases_{lang}"] = len(m.phrases)
        out[f"phrase_build_ms_{lang}"] = round(1000 * min(times), 1)
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ba-"))
    began = time.monotonic()
    reg = home_snapshot()
    home = reg.snapshot()
    matcher = Matcher("en", home, CAPS)
    cases = [COMMANDS[i] for i in QUICK_PICK] if QUICK else COMMANDS
    res: dict[str, Any] = {"bench": "assist", "quick": QUICK, "cases": len(cases)}
    res.update(phrase_set(home))

    # -- text: accuracy, false actions, matching time vs raw hassil
    right = sum(outcome(matcher.match(t), home) == expected(k, w) for t, k, w in cases)
    res["text_accuracy"] = round(right / len(cases), 3)
    false_text = sum(acts(matcher.match(t), home) for t, k, _ in cases if k == "no")
    # The same work: sentences hassil matches as they are (loomd adds nothing to hassil's
    # own call then). The rest is what raw hassil cannot match at all: loomd's repairs.
    ours, raw, repair = [], [], []
    for _ in range(3 if QUICK else 10):
        for t, _k, _w in cases:
            a = time.perf_counter()
            hit = matcher.recognize(t)
            b = time.perf_counter()
            matcher.match(t)
            c = time.perf_counter()
            if hit is not None:
                raw.append((b - a) * 1e6)
                ours.append((c - b) * 1e6)
            else:
                repair.append((c - b) * 1e6)
    res["match_p50_us"] = round(statistics.median(ours), 1)
    res["raw_hassil_p50_us"] = round(statistics.median(raw), 1)
    res["repair_p50_us"] = round(statistics.median(repair), 1) if repair else None

    # -- audio: loomd (prompt + fuzzy) vs raw whisper + raw hassil
    from loomd.audio.tts import PiperTts

    piper = PiperTts(str(MODELS), "piper/en_US-joe-medium.onnx")
    clips: list[tuple[str, str, Any, str, bytes]] = []
    for i, (t, k, w) in enumerate(cases):
        pcm = piper.synthesize(t)
        pad = b"\0" * 9600
        clips.append((t, k, w, "piper", pad + pcm + pad))
        clips.append((t, k, w, "espeak", espeak(t, tmp / f"e{i}.wav")))
    from pywhispercpp.model import Model

    model = Model(str(MODELS / "whisper/ggml-tiny.en.bin"), n_threads=1, print_progress=False,
                  print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip
    vocab = ", ".join(matcher.vocabulary())
    worker = SttWorker(str(MODELS), "whisper/ggml-tiny.en.bin", threads=1)

    async def stt_all(pcms: list[bytes], prompt: str) -> list[str]:
        if worker.pid is None:
            await worker.load()
        return [(await worker.transcribe(p, prompt)).text for p in pcms]

    false_audio = 0
    raw_stt_ms: list[float] = []
    # The daemon's default ([voice.stt] assist_vocabulary = false): no names in the prompt;
    # with them, on the clean clips, for the record.
    clean = [c[4] for c in clips]
    with_vocab = asyncio.run(stt_all(clean, vocab))
    ok = sum(outcome(matcher.match(h), home) == expected(c[1], c[2])
             for c, h in zip(clips, with_vocab, strict=True))  # fmt: skip
    res["audio_accuracy_clean_with_vocabulary_prompt"] = round(ok / len(clips), 3)
    sweep: dict[str, dict[str, float]] = {}
    false_fe = 0
    for label, snr in (("clean", None), ("10db", 10.0)):
        pcms = [noisy(c[4], snr, j) for j, c in enumerate(clips)]
        texts = asyncio.run(stt_all(pcms, ""))
        ok = ok_raw = 0
        for (t, k, w, voice, _), pcm, heard in zip(clips, pcms, texts, strict=True):
            a = time.perf_counter()
            audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
            raw_heard = clean_text(" ".join(s.text for s in model.transcribe(
                audio, audio_ctx=audio_ctx_for(len(pcm) / 32000), single_segment=True,
                no_context=True)))  # fmt: skip
            if snr is None:
                raw_stt_ms.append((time.perf_counter() - a) * 1000)
            want = expected(k, w)
            m = matcher.match(heard)
            ok += outcome(m, home) == want
            if outcome(m, home) != want:  # where the misses come from
                print(f"miss ({label}, {voice}): {t!r} heard {heard!r} -> {outcome(m, home)}",
                      file=sys.stderr)  # fmt: skip
            ok_raw += outcome(raw_match(matcher, raw_heard), home) == want
            if k == "no" and acts(m, home):
                false_audio += 1
                print(f"FALSE ACTION ({label}): {t!r} heard {heard!r}", file=sys.stderr)
        res[f"audio_accuracy_{label}"] = round(ok / len(clips), 3)
        res[f"raw_audio_accuracy_{label}"] = round(ok_raw / len(clips), 3)
        # The same clips (the same noise) through the front end, then the same STT stage.
        for name, ns, agc in frontend_variants():
            leads = [noisy(c[4], snr, j, FRONTEND_LEAD_S) for j, c in enumerate(clips)]
            spent: list[float] = []
            fe_pcms = [through_frontend(p, ns, agc, spent) for p in leads]
            fe_texts = asyncio.run(stt_all(fe_pcms, ""))
            ok_fe = sum(outcome(matcher.match(h), home) == expected(c[1], c[2])
                        for c, h in zip(clips, fe_texts, strict=True))  # fmt: skip
            key = f"audio_accuracy_{label}_{name}"
            if name == "frontend":
                pairs = zip(clips, fe_texts, strict=True)
                false_fe += sum(acts(matcher.match(h), home) for c, h in pairs if c[1] == "no")
                res[key] = round(ok_fe / len(clips), 3)
                res["frontend_us_per_frame"] = round(statistics.mean(spent) * 1e6, 1)
            else:
                sweep.setdefault(name, {})[f"audio_accuracy_{label}"] = round(ok_fe / len(clips), 3)
    worker.close()
    # Closed-set rescoring (loomd/assist/rescore.py): the same clips, the same noise, the
    # STT stage with rescoring; `audio_accuracy_<label>_rescore_pass` is that pass without it.
    from bench.assist_rescore import measure

    res.update(measure(clips, matcher, home, MODELS, noisy, outcome, expected))
    fs = FrontendSettings()
    res["frontend_default"] = f"ns{fs.noise_suppression}_agc{fs.auto_gain}"
    if sweep:
        res["frontend_sweep"] = sweep
    res["false_actions_frontend"] = false_fe
    variants = frontend_variants()
    res.update(wake_effect(tmp, piper, variants[0][1], variants[0][2]))
    for name, ns, agc in variants[1:]:
        got = wake_effect(tmp, piper, ns, agc)
        sweep[name].update({k.removesuffix("_frontend"): v for k, v in got.items()
                            if k.endswith("10db_frontend")})  # fmt: skip
    res["false_actions"] = false_text + false_audio
    res["raw_stt_bench_p50_ms"] = pctl(raw_stt_ms, 0.5)  # the audio section's clean clips

    # -- the daemon: end of speech -> action done, -> first reply audio
    device_cases = [c for c in cases if c[1] == "act" and all(cap.startswith("home.")
                                                              for cap, _ in c[2])]  # fmt: skip
    res.update(daemon_turns(tmp, device_cases[: 3 if QUICK else 8]))
    res["wall_s"] = round(time.monotonic() - began, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res))


_RAW: Any = None


def raw_stt(pcm: bytes) -> float:
    """ms for pywhispercpp on `pcm`, called the way loomd's stage calls it (audio_ctx)."""
    global _RAW
    if _RAW is None:
        from pywhispercpp.model import Model

        _RAW = Model(str(MODELS / "whisper/ggml-tiny.en.bin"), n_threads=1,
                     print_progress=False, print_realtime=False,
                     redirect_whispercpp_logs_to=None)  # fmt: skip
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    began = time.perf_counter()
    _RAW.transcribe(audio, audio_ctx=audio_ctx_for(len(pcm) / 32000), single_segment=True,
                    no_context=True)  # fmt: skip
    return (time.perf_counter() - began) * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_turns(tmp: Path, cases: list[tuple[str, str, Any]]) -> dict[str, Any]:
    from loomd.audio.settings import VadSettings
    from loomd.messages import AssistRequest, AssistTurn, Topic
    from loomd.sdk import Client

    root = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    port = free_port()
    (root / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nset_tcp_nodelay true\nallow_anonymous true\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(root / "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    (root / "home.d").mkdir()
    table = HOME_TOML + "".join(
        f'[[devices]]\nid = "{i}"\nname = "{n}"\narea = "{a}"\ndomain = "{d}"\n'
        f"aliases = {json.dumps(al)}\n"
        + (f'state_topic = "bench/{i}/state"\n' if d == "sensor" else
           f'command_topic = "bench/{i}/set"\n')
        + ('brightness_template = "{value}"\n' if d == "light" else "")
        + ('temperature_template = "{value}"\n' if d == "climate" else "")
        for i, n, a, d, al in DEVICES
    )  # fmt: skip
    (root / "home.d" / "bench.toml").write_text(table)
    conf = daemon_config(
        root,
        "[metrics]\nenabled = false\n"
        f"[mqtt]\nenabled = true\nport = {port}\ndiscovery = false\n"
        f"[assist]\nenabled = true\nllm = true\n"
        f'[llm]\nenabled = true\nmodel = "{MODELS / "llm/SmolLM2-135M-Instruct.gguf"}"\n'
        f"threads = 1\n"
        f'[voice]\nenabled = true\nmodels_dir = "{MODELS}"\nsink = "buffer"\nagent = "assist"\n',
    )
    proc = spawn_daemon(conf)
    wake = root / "wake.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wake), "hey jarvis"],
                   check=True)  # fmt: skip
    clips, commands = [], []
    raw_ms: list[float] = []
    llm_turns: list[tuple[Any, Any]] = []
    for i, (t, _k, _w) in enumerate(cases):
        raw = root / f"c{i}.raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), t], check=True)
        out = root / f"turn{i}.wav"
        subprocess.run(["sox", str(wake), str(raw), "-r", "16000", "-c", "1", "-b", "16",
                        str(out), "pad", "0.5", "1.0"], check=True)  # fmt: skip
        clips.append(out)
        pcm = root / f"c{i}.wav"
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(pcm)],
                       check=True)  # fmt: skip
        commands.append(read_wav(pcm))

    async def run() -> list[dict[str, Any]]:
        endpoint = f"ipc://{root}/run/bus.sock"
        deadline = time.monotonic() + 90
        while True:
            try:
                async with Client(endpoint, name="bench", timeout=2) as bus:
                    caps = await bus.call("agents.caps")
                    if any(c["name"] == "home.turn_on" for c in caps["capabilities"]):
                        await bus.call("voice.last")
                        await bus.call("llm.stats")
                        break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the assist reads the catalogue once more
        turns = []
        async with Client(endpoint, name="bench", timeout=10) as bus:
            for text, want in LLM_CASES:  # no sentence covers these: the model with tools
                req = AssistRequest(text, conversation_id=f"bench-{len(llm_turns)}")
                ev = await bus.request(Topic.ASSIST_CONVERSE, req.to_payload(), timeout=240)
                llm_turns.append((AssistTurn.from_payload(ev.payload), want))
            for clip, cmd in zip(clips, commands, strict=True):
                r = await bus.call("voice.test", args=[str(clip)], timeout=240)
                turns.extend(r["turns"])
                # Raw whisper.cpp on the same command right after, under the same load.
                raw_ms.append(raw_stt(cmd))
        return turns

    try:
        turns = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(20)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    for t in turns:
        print(f"turn {t['transcript']!r}: {t['timings']}", file=sys.stderr)
    calls = [a for t, _ in llm_turns for a in t.actions]
    for t, _ in llm_turns:
        print(f"llm {t.transcript!r}: {[(a.capability, a.params, a.code) for a in t.actions]} "
              f"{t.reply[:60]!r}", file=sys.stderr)  # fmt: skip
    valid = [a for a in calls if a.code not in ("invalid_params", "provider_unavailable")]
    right = sum(
        want is not None and any(a.capability.split("@")[0] == want[0]
                                 and a.params.get("device") == want[1] for a in t.actions)
        for t, want in llm_turns
    )  # fmt: skip
    firsts = [t.timings["llm_first"] for t, _ in llm_turns if "llm_first" in t.timings]
    llm = {
        "llm_tool_calls": len(calls),
        "llm_tool_valid_rate": round(len(valid) / len(calls), 3) if calls else None,
        "llm_tool_accuracy": round(right / sum(w is not None for _, w in llm_turns), 3),
        "llm_first_call_ms": pctl(firsts, 0.5),
        "llm_false_actions": sum(
            a.code == "ok" for t, w in llm_turns if w is None for a in t.actions
        ),
    }
    done = [t["timings"]["action_done"] for t in turns if "action_done" in t["timings"]]
    audio = [t["timings"]["first_audio"] for t in turns if "first_audio" in t["timings"]]
    return {
        "daemon_turns": len(turns),
        "daemon_actions_ok": sum(
            all(a["code"] == "ok" for a in t["actions"]) and bool(t["actions"]) for t in turns
        ),
        "eos_to_action_p50_ms": pctl(done, 0.5),
        "eos_to_action_p95_ms": pctl(done, 0.95),
        "eos_to_reply_audio_ms": pctl(audio, 0.5),
        "vad_hangover_ms": VadSettings().hangover_ms,
        "raw_stt_p50_ms": pctl(raw_ms, 0.5),
        **llm,
    }


if __name__ == "__main__":
    main()
