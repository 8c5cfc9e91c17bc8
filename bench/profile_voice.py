"""Profile voice turns with py-spy: the daemon and its stage workers while `voice.test`
runs the router's path (STT -> llama.cpp's first sentence -> Piper) three times.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_voice.py [OUT.svg] [flamegraph|raw]

Writes a flame graph (docs/perf/voice-turn.svg by default) of every process under the
daemon, after one warm-up turn, and prints each turn's timings (ms since speech end)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import wait_daemon_op
from bench.voice import speak
from bench.voice_memory import MODELS, start_daemon


def main() -> None:
    from loomd.sdk import Client
    from tests.audio.conftest import Responder

    out = sys.argv[1] if len(sys.argv) > 1 else "docs/perf/voice-turn.svg"
    fmt = sys.argv[2] if len(sys.argv) > 2 else "flamegraph"
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    tmp = Path(tempfile.mkdtemp(prefix="vp-"))
    wake = speak("hey jarvis", tmp / "wake.wav", (0.5, 0.6))
    cmd = speak("turn on the kitchen lights", tmp / "c.wav", (0.0, 0.8))
    subprocess.run(["sox", str(wake), str(cmd), str(tmp / "turn.wav")], check=True)
    root = Path(tempfile.mkdtemp(prefix="vp-", dir="/tmp"))
    proc = start_daemon(root, 'agent = "llm"\n')
    llm = Responder(MODELS / "llm/SmolLM2-135M-Instruct.gguf")

    async def run() -> list[dict[str, Any]]:
        endpoint = f"ipc://{root}/run/bus.sock"
        await wait_daemon_op(endpoint, "voice.last", 90)
        async with Client(endpoint, name="profile", timeout=10) as bus:
            llm.ready = asyncio.Event()
            server = asyncio.create_task(llm.serve(bus))
            await llm.ready.wait()
            await bus.call("voice.test", args=[str(tmp / "turn.wav")], timeout=240)  # warm-up
            record = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(proc.pid), "--subprocesses", "--rate", "250",
                "--output", out, "--format", fmt,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(1.0)
            timings = []
            for _ in range(3):
                r = await bus.call("voice.test", args=[str(tmp / "turn.wav")], timeout=240)
                timings.append(r["turns"][0]["timings"])
            record.send_signal(2)  # SIGINT: py-spy writes what it has
            await asyncio.wait_for(record.wait(), 30)
            server.cancel()
            return timings

    try:
        for t in asyncio.run(run()):
            print({k: round(v) for k, v in t.items()})
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"flame graph: {out}")


if __name__ == "__main__":
    main()
