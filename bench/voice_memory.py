"""Voice memory: PSS of the daemon and each of its voice worker processes, idle after one
turn's worth of warm-up (the component's own: one synthesis, one whisper call), for
bench/voice.py; alone it starts its own daemon.

    .venv/bin/python bench/voice_memory.py

PSS (proportional set size, psutil `memory_full_info`) counts a page shared by N processes
as 1/N in each, so the sum over the daemon and its workers is what they cost together
(RSS counts shared libraries once per process). Ends with one JSON line."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import small_models_dir, wait_daemon_op

MODELS = small_models_dir()


def voice_pss(pid: int) -> dict[str, Any]:
    """PSS and RSS (MB) of the daemon `pid` and each child, named by its worker kind."""
    import psutil  # type: ignore[import-untyped]

    daemon = psutil.Process(pid)
    out: dict[str, Any] = {}
    total_pss = total_rss = 0.0
    for p in [daemon, *daemon.children(recursive=True)]:
        cmd = p.cmdline()
        name = "daemon" if p.pid == pid else "other"
        if "loomd.audio.worker" in cmd:  # its kinds: '[["wake", 5, 8, [...]], ...]'
            specs = json.loads(cmd[cmd.index("loomd.audio.worker") + 1])
            name = "_".join(str(spec[0]) for spec in specs)
        mem = p.memory_full_info()
        key = f"pss_{name}_mb"
        out[key] = round(out.get(key, 0.0) + mem.pss / 1e6, 1)
        total_pss += mem.pss / 1e6
        total_rss += mem.rss / 1e6
    out["pss_voice_total_mb"] = round(total_pss, 1)
    out["rss_voice_total_mb"] = round(total_rss, 1)
    return out


def start_daemon(root: Path, extra: str = "") -> subprocess.Popen[bytes]:
    conf = root / "loomd.toml"
    conf.write_text(
        f'[daemon]\ndevice_id = "bench"\n[paths]\nruntime_dir = "{root}/run"\n'
        f'state_dir = "{root}/state"\ncache_dir = "{root}/cache"\n[metrics]\nenabled = false\n'
        f'[voice]\nenabled = true\nmodels_dir = "{MODELS}"\n' + extra
    )
    return subprocess.Popen([sys.executable, "-m", "loomd.daemon", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def idle_memory() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))
    proc = start_daemon(root)
    try:
        asyncio.run(wait_daemon_op(f"ipc://{root}/run/bus.sock", "voice.last", 90))
        time.sleep(2.0)  # idle: the warm-up done, the wake word scoring silence
        return voice_pss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    res = idle_memory()
    for k, v in res.items():
        print(f"{k:<28}{v:>8}")
    print(json.dumps(res))
