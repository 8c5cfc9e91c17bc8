"""The router against raw llama-cpp-python: same model, threads and prompts, one run.

    .venv/bin/python bench/llm.py [--quick] [--model PATH] [--threads N]

Measures: RSS of raw llama-cpp-python with the model loaded (a child process) against the
daemon's; then, prompt by prompt and interleaved (so all three see the same background
load on a shared box), TTFT and decode tokens/s of raw llama-cpp-python in this process,
of the real daemon (`[llm]` enabled) over its socket with the SDK (`llm.chat`, tokens
streamed on the reply thread), and of its OpenAI-compatible endpoint with the `openai`
client; the event loop's lag while a generation runs (a 5 ms ticker in a Host in this
process, against the same ticker idle); the cost of `decide()`. The first prompt warms
up and is left out of the medians. Prints a table with ratios, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import small_models_dir  # noqa: E402

DEFAULT_MODEL = small_models_dir() / "llm" / "SmolLM2-135M-Instruct.gguf"
PROMPTS = [
    "Write two sentences about the sea.",
    "Describe a red bicycle in two sentences.",
    "Write two sentences about a mountain village.",
    "Describe a rainy morning in two sentences.",
    "Write two sentences about a lighthouse.",
    "Describe an old library in two sentences.",
]
MAX_TOKENS = 64


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


# -- raw -------------------------------------------------------------------------------------
def raw_turn(llm: Any, prompt: str) -> dict[str, float]:
    """One streamed generation straight on llama-cpp-python: the baseline."""
    began = time.perf_counter()
    first = 0.0
    tokens = 0
    for chunk in llm.create_chat_completion(
        [{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=True,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if tokens == 1:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_ms": (first - began) * 1000, "tps": (tokens - 1) / (end - first), "n": tokens}


def raw_child(model: str, threads: int) -> None:
    """In a child process, so its RSS is the raw library's alone (after one generation)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    raw_turn(llm, PROMPTS[0])
    print(json.dumps({"rss_mb": rss_mb()}))


def raw_rss(model: Path, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--raw-child", str(model), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"])


def config(root: Path, model: Path, threads: int, http_port: int = 0) -> Path:
    cfg = root / "loomd.toml"
    cfg.write_text(
        f'[paths]\nruntime_dir = "{root}/run"\nstate_dir = "{root}/state"\n'
        f'cache_dir = "{root}/cache"\n[metrics]\nenabled = false\n'
        f'[llm]\nenabled = true\nmodel = "{model}"\nthreads = {threads}\n'
        f"http_port = {http_port}\n"
    )
    return cfg


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_turns(port: int, prompts: list[str]) -> list[dict[str, float]]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    runs = []
    try:
        for prompt in prompts:
            began = time.perf_counter()
            tokens, first = 0, 0.0
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=MAX_TOKENS,
                temperature=0.0,
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
                    if tokens == 1:
                        first = time.perf_counter()
            end = time.perf_counter()
            runs.append(
                {
                    "ttft_ms": (first - began) * 1000,
                    "tps": (tokens - 1) / (end - first),
                    "n": tokens,
                }
            )
    finally:
        await client.close()
    return runs


async def timed_turns(
    bus: Any, prompts: list[str], priority: str = "interactive"
) -> list[dict[str, float]]:
    from loomd.messages import ChatMessage, ChatRequest, EventType, Topic

    runs = []
    for prompt in prompts:
        thread = os.urandom(16)
        reply_to = f"thread.{thread.hex()}.reply"
        req = ChatRequest(
            (ChatMessage("user", prompt),),
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            priority=priority,
        )
        async with bus.subscribe(reply_to, "reliable") as sub:
            await sub.ready()
            began = time.perf_counter()
            await bus.publish(Topic.LLM_CHAT, req.to_payload(), thread_id=thread, reply_to=reply_to)
            tokens, first = 0, 0.0
            async for ev in sub:
                if ev.type == EventType.LLM_CHUNK:
                    tokens += 1
                    if tokens == 1:
                        first = time.perf_counter()
                elif ev.type == EventType.LLM_DONE:
                    end = time.perf_counter()
                    break
        runs.append(
            {"ttft_ms": (first - began) * 1000, "tps": (tokens - 1) / (end - first), "n": tokens}
        )
    return runs


async def loaded(bus: Any) -> bool:
    from loomd.errors import RemoteError

    try:  # the socket is up before the llm component has started
        return bool((await bus.call("llm.stats"))["engine"].get("loaded"))
    except RemoteError:
        return False


async def run_daemon(model: Path, threads: int, n: int) -> dict[str, Any]:
    from loomd.sdk import Client

    with tempfile.TemporaryDirectory(prefix="lb", dir="/tmp") as tmp:
        root = Path(tmp)
        port = free_port()
        cfg = config(root, model, threads, port)
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
            [sys.executable, "-m", "loomd.daemon", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock = root / "run" / "bus.sock"
            async with asyncio.timeout(60):
                while not sock.exists():  # noqa: ASYNC110 - a file appears; no event
                    await asyncio.sleep(0.05)
            async with Client(f"ipc://{sock}", name="bench", timeout=30) as bus:
                async with asyncio.timeout(60):
                    while not await loaded(bus):  # noqa: ASYNC110 - polls the daemon
                        await asyncio.sleep(0.1)
                # interleaved, prompt by prompt: raw, bus, HTTP see the same background load
                import llama_cpp

                llm = llama_cpp.Llama(
                    str(model),
                    n_ctx=2048,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
                raw: list[dict[str, float]] = []
                runs: list[dict[str, float]] = []
                http: list[dict[str, float]] = []
                for prompt in PROMPTS[:n]:
                    raw.append(await asyncio.to_thread(raw_turn, llm, prompt))
                    runs += await timed_turns(bus, [prompt])
                    # a different first word: the daemon's prompt cache (the bus turn just
                    # ran this prompt) must not give HTTP a free prefill
                    http += await http_turns(port, ["Now: " + prompt])
                llm.close()
                engine = (await bus.call("llm.stats"))["engine"]
                daemon_rss = rss_mb(proc.pid)
            return {"raw": raw, "runs": runs, "http": http, "rss_mb": daemon_rss, "engine": engine}
        finally:
            proc.terminate()
            proc.wait(20)


# -- loop lag, in process --------------------------------------------------------------------
async def loop_lag_during_generation(
    model: Path, threads: int, n: int
) -> tuple[list[float], list[float]]:
    from loomd.host import Host
    from loomd.settings import load_config

    with tempfile.TemporaryDirectory(prefix="lb", dir="/tmp") as tmp:
        root = Path(tmp)
        async with Host(
            load_config(config(root, model, threads)), names=["state", "bus", "llm"]
        ) as host:
            llm: Any = host.get("llm")
            lags: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                loop = asyncio.get_running_loop()
                while not done.is_set():
                    t = loop.time()
                    await asyncio.sleep(0.005)
                    lags.append(max(0.0, (loop.time() - t - 0.005) * 1000))

            tick = asyncio.create_task(ticker())
            await asyncio.sleep(1.0)  # the same ticker with nothing generating: the baseline
            idle = list(lags)
            lags.clear()
            await timed_turns(llm.ctx.bus, PROMPTS[:n])
            done.set()
            await tick
            return idle, lags


def decide_cost_us() -> float:
    from loomd.messages import ChatMessage, ChatRequest, Policy
    from loomd.router.policy import Facts, decide, resolve
    from loomd.router.settings import PolicySettings

    req = ChatRequest((ChatMessage("user", "turn on the lights please"),), max_tokens=64)
    pol = resolve(Policy(privacy="public", allow_cloud=True), PolicySettings())
    facts = Facts(local_available=True, local_tps=50, cloud_configured=True, cloud_state="closed")
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        decide(req, pol, facts)
    return (time.perf_counter() - t) / n * 1e6


def cpu_pressure_now() -> float:
    from loomd.router.facts import cpu_pressure

    return cpu_pressure()


def med(runs: list[dict[str, float]], key: str) -> float:
    # the first run warms caches (and the prompt cache); it is left out of the medians
    return statistics.median(r[key] for r in (runs[1:] or runs))


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--raw-child", nargs=2)
    a = ap.parse_args()
    if a.raw_child:
        raw_child(a.raw_child[0], int(a.raw_child[1]))
        return
    n = 3 if a.quick else len(PROMPTS)
    raw_rss_mb = raw_rss(a.model, a.threads)
    bus = asyncio.run(run_daemon(a.model, a.threads, n))
    raw = {"runs": bus["raw"], "rss_mb": raw_rss_mb}
    idle, lags = asyncio.run(loop_lag_during_generation(a.model, a.threads, n))
    dus = decide_cost_us()
    res = {
        "model": a.model.name,
        "threads": a.threads,
        "runs": n,
        "raw_tps": round(med(raw["runs"], "tps"), 1),
        "loomd_bus_tps": round(med(bus["runs"], "tps"), 1),
        "loomd_http_tps": round(med(bus["http"], "tps"), 1),
        "loomd_http_ttft_ms": round(med(bus["http"], "ttft_ms"), 1),
        "engine_ttft_ms_ema": bus["engine"]["ttft_ms"],
        "raw_ttft_ms": round(med(raw["runs"], "ttft_ms"), 1),
        "loomd_ttft_ms": round(med(bus["runs"], "ttft_ms"), 1),
        "loop_lag_p99_ms_during_gen": round(p99(lags), 2),
        "loop_lag_p99_ms_idle": round(p99(idle), 2),
        "cpu_pressure_avg10": cpu_pressure_now(),
        "decide_us": round(dus, 2),
        "rss_model_mb": round(bus["rss_mb"], 1),
        "raw_rss_model_mb": round(raw["rss_mb"], 1),
        "bench_peak_rss_mb": round(rss_mb(), 1),
    }
    rows = [
        ("decode tok/s", res["raw_tps"], res["loomd_bus_tps"], res["loomd_http_tps"]),
        ("TTFT ms", res["raw_ttft_ms"], res["loomd_ttft_ms"], res["loomd_http_ttft_ms"]),
        ("RSS MB (model loaded)", res["raw_rss_model_mb"], res["rss_model_mb"], None),
    ]
    print(f"{'':24}{'raw':>10}{'loomd bus':>12}{'ratio':>8}{'loomd http':>12}{'ratio':>8}")
    for name, raw_v, bus_v, http_v in rows:
        line = f"{name:24}{raw_v:>10.1f}{bus_v:>12.1f}{bus_v / raw_v if raw_v else 0:>8.2f}"
        if http_v is not None:
            line += f"{http_v:>12.1f}{http_v / raw_v if raw_v else 0:>8.2f}"
        print(line)
    print(f"TTFT overhead: {res['loomd_ttft_ms'] - res['raw_ttft_ms']:+.1f} ms; "
          f"loop lag p99 during generation: {res['loop_lag_p99_ms_during_gen']} ms "
          f"({len(lags)} ticks; idle {res['loop_lag_p99_ms_idle']} ms); "
          f"decide(): {res['decide_us']} us; "
          f"CPU pressure {res['cpu_pressure_avg10']} %")  # fmt: skip
    print(json.dumps(res))


if __name__ == "__main__":
    main()
