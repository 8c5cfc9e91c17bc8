"""Voice: each raw library call against the same stage inside loomd, in one run.

    .venv/bin/python bench/voice.py [--quick]

Raw: pywhispercpp transcribe (default call, and with the audio_ctx loomd picks),
openWakeWord predict per 80 ms frame, Piper to the first chunk, llama.cpp (SmolLM2) to the
first token. loomd: the same stages through their loomd classes and threads, the wake word's
CPU share while fed 20 ms frames, and a whole turn on the real daemon (`voice.test` with a
llama.cpp responder on `llm.chat`): VAD end -> first TTS audio. Speech to text per engine
(whisper, Moonshine) against its raw library: WER over 66 clips (40 with --quick) clean /
20 dB / 10 dB white noise, p50, RSS (bench/voice_stt.py).
Peers: with LOOMD_WYOMING_PEERS (a venv bin/ holding wyoming-bench, wyoming-faster-whisper
and wyoming-piper) and LOOMD_CT2_TINY_EN (the CTranslate2 tiny.en folder), wyoming-bench
measures loomd's Wyoming port next to them. Ends with one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import daemon_config, small_models_dir, spawn_daemon, wait_daemon_op
from bench.voice_stt import stt_bench, stt_row
from loomd.audio.io import read_wav
from loomd.audio.stt import audio_ctx_for, clean_text
from loomd.audio.tts import PiperTts
from loomd.audio.wake import WakeDetector

QUICK = "--quick" in sys.argv
MODELS = small_models_dir()
SENTENCES = [
    "turn on the kitchen lights",
    "set the thermostat to twenty one degrees",
    "what is the weather like in Lisbon tomorrow",
    "close the garage door",
    "play some jazz in the living room",
    "remind me to water the plants at six",
]


def speak(text: str, out: Path, pad: tuple[float, float] = (0.5, 0.5)) -> Path:
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad",
                    *map(str, pad)], check=True)  # fmt: skip
    return out


def f32(pcm: bytes) -> Any:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def median_ms(fn: Any, n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(out), 1)


# --- raw libraries -----------------------------------------------------------------------
def raw_whisper() -> Any:
    from pywhispercpp.model import Model

    return Model(str(MODELS / "whisper/ggml-tiny.en.bin"), n_threads=1, print_progress=False,
                 print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip


def raw_text(model: Any, pcm: bytes, **kw: Any) -> str:
    return clean_text(" ".join(s.text for s in model.transcribe(f32(pcm), **kw)))


def main() -> None:
    rounds = 3 if QUICK else 7
    tmp = Path(tempfile.mkdtemp(prefix="vb-"))
    res: dict[str, Any] = {}
    clip = read_wav(speak(SENTENCES[0], tmp / "cmd.wav"))
    # STT
    model = raw_whisper()
    ctx = audio_ctx_for(len(clip) / 32000)

    res.update(stt_row(model, clip, rounds))
    # wake
    from openwakeword.model import Model as Oww

    ow = MODELS / "openwakeword"
    oww = Oww(wakeword_models=[str(ow / "hey_jarvis_v0.1.onnx")], inference_framework="onnx",
              melspec_model_path=str(ow / "melspectrogram.onnx"),
              embedding_model_path=str(ow / "embedding_model.onnx"))  # fmt: skip
    audio = np.frombuffer(read_wav(speak("hey jarvis " + SENTENCES[1], tmp / "w.wav")), np.int16)
    frames = [audio[i : i + 1280] for i in range(0, len(audio) - 1280, 1280)] * (2 if QUICK else 6)
    t = time.perf_counter()
    for fr in frames:
        oww.predict(fr)
    res["raw_wake_ms_per_frame"] = round((time.perf_counter() - t) * 1000 / len(frames), 3)
    det = WakeDetector(str(MODELS), ("openwakeword/hey_jarvis_v0.1.onnx",))
    pcm = audio.tobytes() * (2 if QUICK else 6)

    async def loomd_wake() -> float:
        # As the component does: 4 frames of 20 ms per hop to the wake thread.
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()
        cpu = time.process_time()
        for i in range(0, len(pcm) - 2560, 2560):
            await loop.run_in_executor(pool, det.process, pcm[i : i + 2560], i / 32000)
        pool.shutdown()
        return time.process_time() - cpu

    # Before (the detector in a thread, as last round) and after (in its worker process:
    # one pipe round trip per 80 ms), alternated in the same run.
    thread_s, worker_s = [], []
    for _ in range(2):
        thread_s.append(asyncio.run(loomd_wake()))
        worker_s.append(asyncio.run(worker_wake(pcm)))
    res["loomd_wake_cpu_pct"] = round(100 * min(thread_s) / (len(pcm) / 32000), 2)
    res["wake_cpu_pct"] = round(100 * min(worker_s) / (len(pcm) / 32000), 2)
    res["worker_crash_recovered"] = asyncio.run(crash_recovery(audio.tobytes()))
    # TTS
    from piper import PiperVoice

    onnx = MODELS / "piper/en_US-joe-medium.onnx"
    voice = PiperVoice.load(str(onnx), config_path=str(onnx) + ".json")
    sentence = "The kitchen lights are on now."
    res["raw_tts_first_ms"] = median_ms(lambda: next(iter(voice.synthesize(sentence))), rounds)
    tts = PiperTts(str(MODELS), "piper/en_US-joe-medium.onnx")
    res["loomd_tts_first_ms"] = median_ms(lambda: tts.synthesize(sentence), rounds)
    # LLM first token
    from llama_cpp import Llama

    llm = Llama(str(MODELS / "llm/SmolLM2-135M-Instruct.gguf"), n_ctx=1024, n_threads=1,
                verbose=False, seed=7)  # fmt: skip
    from loomd.audio.settings import VoiceSettings

    msgs = [{"role": "system", "content": VoiceSettings().system_prompt},
            {"role": "user", "content": "Turn on the kitchen lights."}]  # fmt: skip

    from loomd.audio.tts import SentenceSplitter

    def first_token() -> None:
        llm.reset()  # no cached prompt prefix: the daemon's first turn has none either
        for part in llm.create_chat_completion(msgs, max_tokens=8, stream=True):  # type: ignore[arg-type]
            if part["choices"][0]["delta"].get("content"):  # type: ignore[index]
                break

    def first_sentence() -> str:
        """The LLM to its first sentence, at temperature 0 as the daemon's responder."""
        llm.reset()
        split = SentenceSplitter()
        for part in llm.create_chat_completion(msgs, max_tokens=96, stream=True,  # type: ignore[arg-type]
                                               temperature=0.0):  # fmt: skip
            if done := split.feed(part["choices"][0]["delta"].get("content") or ""):  # type: ignore[union-attr]
                return done[0]
        return (split.flush() or [""])[0]

    res["raw_llm_first_ms"] = median_ms(first_token, rounds)
    res["raw_llm_sentence_ms"] = median_ms(first_sentence, rounds)
    # The raw stages a reply needs before its first audio: STT (same audio_ctx), the LLM to
    # its first sentence, Piper on that sentence.
    res["raw_stage_sum_ms"] = round(
        res["raw_stt_ctx_ms"] + res["raw_llm_sentence_ms"] + res["raw_tts_first_ms"], 1
    )
    # WER of each engine and its raw library over >= 40 clips, whisper's padding rules
    res.update(stt_bench(QUICK))

    # Whole turns on the daemon, each after one pass of the raw stages (alternated).
    def raw_pass() -> float:
        """STT, the LLM to its first sentence, Piper's first audio of that sentence."""
        t = time.perf_counter()
        raw_text(model, clip, audio_ctx=ctx)
        first = first_sentence()
        next(iter(voice.synthesize(first or sentence)))
        return (time.perf_counter() - t) * 1000

    turns, raw_sums, rss, peer = daemon_turn(tmp, raw_pass, 3 if QUICK else 5)
    t = turns[0]["timings"]
    res["raw_stage_sum_alt_ms"] = round(statistics.median(raw_sums), 1)
    eos = [x["timings"]["first_audio"] for x in turns]
    vad = [x["timings"]["first_audio"] - x["timings"]["vad_end"] for x in turns]
    res["eos_to_audio_ms"] = round(statistics.median(eos), 1)
    res["vad_end_to_audio_ms"] = round(statistics.median(vad), 1)
    res["turn_timings_ms"] = {k: round(statistics.median(x["timings"][k] for x in turns), 1)
                              for k in t if all(k in x["timings"] for x in turns)}  # fmt: skip
    res["rss_voice_mb"] = rss
    res.update(peer)
    from bench.voice_stop import stop_bench

    res.update(stop_bench(MODELS, QUICK))
    from bench.voice_memory import idle_memory

    res.update(idle_memory())
    from bench.bargein import timeline_bench
    from bench.bargein_check import bench as duck_then_check

    timeline = timeline_bench(MODELS, QUICK)
    res.update(timeline)
    # The daemon's barge-in now ducks, then checks (bench/bargein_check.py): its keys win;
    # the one-rendering timeline figure at the speaking threshold is kept beside them.
    res["bargein_detected_at_0.6"] = timeline["bargein_detected"]
    res.update(duck_then_check(MODELS, QUICK))
    res["bench_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res))  # first: a slip in the table below loses no figures
    table(res)
    print(json.dumps(res))


async def worker_wake(pcm: bytes) -> float:
    """CPU seconds (this process and the wake worker) to score `pcm` as the daemon does:
    80 ms per call to the wake worker process."""
    import psutil

    from loomd.audio.stages import Stages

    stages = Stages(str(MODELS), ("openwakeword/hey_jarvis_v0.1.onnx",))
    try:
        await stages.load_wake()
        wake = await stages.wake()
        await wake.process(b"\0" * 2560, 0.0)  # the detector is made on first use
        worker = psutil.Process(stages.wake_worker.pid)
        cpu, child = time.process_time(), sum(worker.cpu_times()[:2])
        for i in range(0, len(pcm) - 2560, 2560):
            await wake.process(pcm[i : i + 2560], i / 32000)
        return float(time.process_time() - cpu + sum(worker.cpu_times()[:2]) - child)
    finally:
        await asyncio.to_thread(stages.close)


async def crash_recovery(wake_clip: bytes) -> int:
    """1 if both workers, killed by SIGSEGV mid-call, fail that call with `WorkerDied` and
    answer the next one (Piper speaks, the wake word fires on "hey jarvis"); else 0."""
    import signal

    import psutil

    from loomd.audio.stages import Stages
    from loomd.audio.worker import WorkerDied

    # As the daemon runs them: the wake word and TTS in one process.
    stages = Stages(str(MODELS), ("openwakeword/hey_jarvis_v0.1.onnx",),
                    ("piper", "piper/en_US-joe-medium.onnx", 0, "en"))  # fmt: skip
    ok = []
    try:
        await stages.load_wake()
        await stages.load_tts()
        assert stages.tts_worker is not None
        pid = stages.tts_worker.pid or 0
        tts = psutil.Process(pid)
        idle = sum(tts.cpu_times()[:2])
        call = asyncio.create_task(stages.synthesize(" ".join(SENTENCES[:4])))
        while sum(tts.cpu_times()[:2]) < idle + 0.03 and not call.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        os.kill(pid, signal.SIGSEGV)
        try:
            await call
            ok.append(False)
        except WorkerDied:
            ok.append(True)
        ok.append(len(await stages.synthesize("The lights are on.")) > 16000)
        wake = await stages.wake()
        try:  # the crash took the wake word's process too: it says so once
            await wake.process(b"\0" * 2560, 0.0)
        except WorkerDied:
            await wake.process(b"\0" * 2560, 0.0)
        os.kill(stages.wake_worker.pid or 0, signal.SIGSEGV)
        dead = psutil.Process(stages.wake_worker.pid)
        while dead.status() != psutil.STATUS_ZOMBIE:  # dead, not reaped: the worker's to see # noqa: ASYNC110
            await asyncio.sleep(0.01)
        try:
            await wake.process(b"\0" * 2560, 0.08)
            ok.append(False)
        except WorkerDied:
            ok.append(True)
        hits = [await wake.process(wake_clip[i : i + 2560], i / 32000)
                for i in range(0, len(wake_clip) - 2560, 2560)]  # fmt: skip
        ok.append(any(h is not None for h in hits))
    finally:
        await asyncio.to_thread(stages.close)
    return int(all(ok) and len(ok) == 4)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PEERS = Path(os.environ.get("LOOMD_WYOMING_PEERS", ""))  # a venv bin/ with the peer servers


def _summary(out: str, column: int) -> dict[str, float]:
    """wyoming-bench's summary rows: server -> the numeric `column` after its name."""
    rows: dict[str, float] = {}
    for line in out.split("Summary")[-1].splitlines():
        m = re.match(r"\s+(\S+) \(([^)]*)\)\s+(.*)", line)
        if m:
            cells = m.group(3).split()
            try:
                rows[m.group(1)] = float(cells[column].rstrip("%"))
            except (IndexError, ValueError):
                pass
    return rows


def peers(tmp: Path, loomd_port: int) -> dict[str, Any]:
    """`wyoming-bench stt|tts` against loomd's Wyoming port and the peer servers users run
    (wyoming-faster-whisper, wyoming-piper), started here from LOOMD_WYOMING_PEERS."""
    keys = (
        "peer_stt_ms",
        "peer_tts_first_ms",
        "loomd_wyoming_stt_ms",
        "loomd_wyoming_tts_first_ms",
    )
    out: dict[str, Any] = dict.fromkeys(keys)
    bench = PEERS / "wyoming-bench"
    ct2 = Path(os.environ.get("LOOMD_CT2_TINY_EN", ""))
    if not bench.exists() or not (ct2 / "model.bin").exists():
        print("peers: set LOOMD_WYOMING_PEERS (a venv bin/ with wyoming-bench, "
              "wyoming-faster-whisper, wyoming-piper) and LOOMD_CT2_TINY_EN; skipped")  # fmt: skip
        return out
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i, text in enumerate(SENTENCES[: 3 if QUICK else 6]):
        speak(text, corpus / f"c{i}.wav")
        (corpus / f"c{i}.txt").write_text(text + "\n")
    fw, pp = free_port(), free_port()
    procs = [
        subprocess.Popen([str(PEERS / "wyoming-faster-whisper"), "--model", str(ct2),
                          "--data-dir", str(tmp / "fw"), "--local-files-only", "--compute-type",
                          "int8", "--beam-size", "1", "--uri", f"tcp://127.0.0.1:{fw}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(PEERS / "wyoming-piper"), "--voice", "en_US-joe-medium",
                          "--data-dir", str(MODELS / "piper"), "--uri", f"tcp://127.0.0.1:{pp}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        time.sleep(8)  # both print "Ready" within a few seconds; wyoming-bench retries nothing
        loomd = f"127.0.0.1:{loomd_port}"
        r = subprocess.run([str(bench), "stt", loomd, f"127.0.0.1:{fw}", "--corpus", str(corpus),
                            "--mode", "non_streaming", "--rounds", "1", "--warmup", "1"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        stt = _summary(r.stdout, 4)  # ok WER CER SAR Total_mean
        out["loomd_wyoming_stt_ms"] = stt.get(loomd)
        out["peer_stt_ms"] = stt.get(f"127.0.0.1:{fw}")
        r = subprocess.run([str(bench), "tts", loomd, f"127.0.0.1:{pp}", "--mode",
                            "non_streaming", "--rounds", "2" if QUICK else "5", "--warmup", "1",
                            "--texts", "The kitchen lights are on now."],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        tts = _summary(r.stdout, 1)  # ok TTFT_mean
        out["loomd_wyoming_tts_first_ms"] = tts.get(loomd)
        out["peer_tts_first_ms"] = tts.get(f"127.0.0.1:{pp}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
    return out


def daemon_turn(
    tmp: Path, raw_pass: Any, n: int
) -> tuple[list[dict[str, Any]], list[float], float, dict[str, Any]]:
    """`voice.test` on the real daemon with a llama.cpp responder on `llm.chat`, `n` times,
    each after one `raw_pass()` (the raw stages' sum, ms); then the peers against its
    Wyoming port."""
    import psutil

    from loomd.messages import ChatChunk, ChatDone, ChatRequest, EventType, Topic
    from loomd.sdk import Client

    wake = speak("hey jarvis", tmp / "wake.wav", (0.5, 0.6))
    cmd = speak(SENTENCES[0], tmp / "c.wav", (0.0, 0.8))
    subprocess.run(["sox", str(wake), str(cmd), str(tmp / "turn.wav")], check=True)
    root = Path(tempfile.mkdtemp(prefix="vd-", dir="/tmp"))
    wport = free_port()
    conf = daemon_config(
        root,
        "[metrics]\nenabled = false\n"
        f'[voice]\nenabled = true\nmodels_dir = "{MODELS}"\n'
        # The router's path (STT -> the LLM's first sentence -> Piper), as the raw sum:
        # with the default agent the assist answers "turn on the kitchen lights" itself.
        f'agent = "llm"\n'
        f"[voice.wyoming]\nenabled = true\nport = {wport}\n",
    )
    proc = spawn_daemon(conf)
    from llama_cpp import Llama

    llm = Llama(str(MODELS / "llm/SmolLM2-135M-Instruct.gguf"), n_ctx=1024, n_threads=1,
                verbose=False, seed=7)  # fmt: skip

    async def run() -> tuple[list[dict[str, Any]], list[float]]:
        endpoint = f"ipc://{root}/run/bus.sock"
        await wait_daemon_op(endpoint, "voice.last", 60)
        async with Client(endpoint, name="bench", timeout=10) as bus:

            async def serve() -> None:
                async with bus.subscribe(Topic.LLM_CHAT) as sub:
                    async for ev in sub:
                        req = ChatRequest.from_payload(ev.payload)
                        q: asyncio.Queue[str | None] = asyncio.Queue()
                        loop = asyncio.get_running_loop()

                        def gen(req: ChatRequest = req, loop: Any = loop,
                                q: asyncio.Queue[str | None] = q) -> None:  # fmt: skip
                            llm.reset()  # type: ignore[no-untyped-call]  # the raw pass resets too
                            for part in llm.create_chat_completion(
                                [{"role": m.role, "content": m.content} for m in req.messages],  # type: ignore[misc]
                                max_tokens=req.max_tokens, stream=True, temperature=0.0,
                            ):  # fmt: skip
                                text = part["choices"][0]["delta"].get("content")  # type: ignore[index]
                                if text:
                                    loop.call_soon_threadsafe(q.put_nowait, text)
                            loop.call_soon_threadsafe(q.put_nowait, None)

                        threading.Thread(target=gen, daemon=True).start()
                        i, full = 0, ""
                        while (piece := await q.get()) is not None:
                            full += piece
                            await bus.reply(ev, ChatChunk(piece, i).to_payload(),
                                            type=EventType.LLM_CHUNK)  # fmt: skip
                            i += 1
                        await bus.reply(ev, ChatDone(full).to_payload(), type=EventType.LLM_DONE)

            server = asyncio.create_task(serve())
            await asyncio.sleep(0.3)
            turns, sums = [], []
            for _ in range(n):
                sums.append(await asyncio.to_thread(raw_pass))
                r = await bus.call("voice.test", args=[str(tmp / "turn.wav")], timeout=240)
                turns.append(dict(r["turns"][0]))
            server.cancel()
            return turns, sums

    try:
        turns, sums = asyncio.run(run())
        # The daemon and its stage workers (STT, wake word, TTS run in child processes).
        daemon = psutil.Process(proc.pid)
        procs = [daemon, *daemon.children(recursive=True)]
        rss = round(sum(p.memory_info().rss for p in procs) / 1e6, 1)
        rss_daemon = round(daemon.memory_info().rss / 1e6, 1)
        peer = peers(tmp, wport)
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)
    peer["rss_daemon_mb"] = rss_daemon
    return turns, sums, rss, peer


def table(r: dict[str, Any]) -> None:
    def ratio(a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}x" if r.get(b) else "-"

    rows = [
        ("STT (3 s clip)", "raw default", r["raw_stt_ms"], "loomd", r["loomd_stt_ms"],
         ratio("loomd_stt_ms", "raw_stt_ms")),
        ("STT, same audio_ctx", "raw", r["raw_stt_ctx_ms"], "loomd", r["loomd_stt_ms"],
         ratio("loomd_stt_ms", "raw_stt_ctx_ms")),
        ("TTS first audio", "raw Piper", r["raw_tts_first_ms"], "loomd",
         r["loomd_tts_first_ms"], ratio("loomd_tts_first_ms", "raw_tts_first_ms")),
        ("speech end -> audio", "raw sum", r["raw_stage_sum_ms"], "loomd (VAD end)",
         r["vad_end_to_audio_ms"], ratio("vad_end_to_audio_ms", "raw_stage_sum_ms")),
        ("  alternated", "raw pass", r["raw_stage_sum_alt_ms"], "loomd (VAD end)",
         r["vad_end_to_audio_ms"], ratio("vad_end_to_audio_ms", "raw_stage_sum_alt_ms")),
    ]  # fmt: skip
    print(f"{'stage':<22}{'baseline':<14}{'ms':>9}  {'loomd':<16}{'ms':>9}  ratio")
    for name, a, av, b, bv, rt in rows:
        print(f"{name:<22}{a:<14}{av:>9.1f}  {b:<16}{bv:>9.1f}  {rt}")
    print(f"wake: raw {r['raw_wake_ms_per_frame']} ms per 80 ms frame; "
          f"loomd {r['loomd_wake_cpu_pct']} % of a core in a thread, "
          f"{r['wake_cpu_pct']} % in its worker process; "
          f"workers recover from SIGSEGV: {r['worker_crash_recovered']}")  # fmt: skip
    print(f"daemon turn (ms since speech end): {r['turn_timings_ms']}")
    print(f"llama.cpp first token {r['raw_llm_first_ms']} ms, first sentence "
          f"{r['raw_llm_sentence_ms']} ms; speech end -> first audio "
          f"{r['eos_to_audio_ms']} ms incl. the VAD hangover")  # fmt: skip
    conds = [k for k in ("clean", "20db", "10db") if f"wer_{k}" in r]
    for name, p in (("whisper", ""), ("moonshine", "moonshine_")):
        if f"{p}wer_clean" in r:
            raw = "/".join(str(r[f"raw_{p}wer_{k}"]) for k in conds)
            ours = "/".join(str(r[f"{p}wer_{k}"]) for k in conds)
            print(f"{name} over {r['stt_clips']} clips, WER {'/'.join(conds)}: raw {raw}  "
                  f"loomd {ours}; p50 raw {r[f'raw_{p}stt_ms_p50']} ms, loomd "
                  f"{r[f'{p}stt_ms_p50']} ms; RSS {r[f'{p}rss_stt_mb']} MB")  # fmt: skip
    print(
        f"wyoming-bench: STT mean loomd {r['loomd_wyoming_stt_ms']} ms vs "
        f"wyoming-faster-whisper {r['peer_stt_ms']} ms; TTS first audio loomd "
        f"{r['loomd_wyoming_tts_first_ms']} ms vs wyoming-piper {r['peer_tts_first_ms']} ms"
    )
    print(f"stop word ({r['stop_word']}): recall {r['stop_recall']} "
          f"(raw {r['raw_stop_recall']}), word end -> silence p50 {r['stop_ms_p50']} ms "
          f"(raw score crossing {r['raw_stop_ms_p50']} ms), self-stops per hour "
          f"{r['self_stop_per_hour']} (raw {r['raw_self_stop_per_hour']})")  # fmt: skip
    print(f"barge-in over a {r['bargein_reply_s']} s reply (5 clips, lag wandering): "
          f"{r['bargein_detected']}/{r['bargein_offsets']} detected (duck, then the check; "
          f"min of {r['bargein_renderings']} renderings), at 0.6 {r['bargein_detected_at_0.6']}, "
          f"control {r['bargein_detected_control']}; with the timeline "
          f"(min score {r['bargein_min_score']}), FIFO {r['bargein_detected_fifo']}/"
          f"{r['bargein_offsets']} (min {r['bargein_min_score_fifo']}); self-wakes "
          f"{r['bargein_self_wakes']} (FIFO {r['bargein_self_wakes_fifo']}); echo reduction "
          f"{r['bargein_erle_db']} dB (FIFO {r['bargein_erle_fifo_db']} dB)")  # fmt: skip
    print(f"RSS: daemon with voice {r['rss_voice_mb']} MB; bench {r['bench_rss_mb']} MB")
    print(f"idle PSS (MB): daemon {r['pss_daemon_mb']}, wake + TTS {r.get('pss_wake_tts_mb')}, "
          f"STT {r['pss_stt_mb']}; total {r['pss_voice_total_mb']} "
          f"(RSS {r['rss_voice_total_mb']}); STT call outside whisper "
          f"{r['loomd_stt_outside_ms']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
