"""`loomctl doctor`: its memory estimates against the real runtimes, and its own cost.

    .venv/bin/python bench/doctor.py [--quick]

In one run: for each model role (llm, stt, tts, wake) a fresh process loads the test model
with the raw library (llama.cpp, pywhispercpp, Piper, openWakeWord), runs it once, and
reports how much its RSS grew from a bare interpreter; the doctor's estimate for the same
configuration (`model_need_bytes`) stands beside it with the ratio (above 1 = the doctor errs
high, which is the safe side). Then the wall time of the whole doctor (every check, no
daemon) and of the cheap checks alone, and the doctor's peak RSS. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import need_test_models  # noqa: E402
from loomd.doctor import all_checks, load_context, model_need_bytes, run_checks  # noqa: E402

MB = 1 << 20

# The raw library call per role, run in a fresh interpreter: prints the RSS growth in bytes.
LOAD = {
    "llm": """
import llama_cpp
m = llama_cpp.Llama(f"{M}/llm/SmolLM2-135M-Instruct.gguf", n_ctx=2048, verbose=False)
m("Hi", max_tokens=4)
""",
    "stt": """
import numpy as np
from pywhispercpp.model import Model
m = Model(f"{M}/whisper/ggml-tiny.en.bin", n_threads=1, print_progress=False,
          redirect_whispercpp_logs_to=None)
m.transcribe(np.zeros(16000, dtype=np.float32))
""",
    "tts": """
from piper import PiperVoice
v = PiperVoice.load(f"{M}/piper/en_US-joe-medium.onnx",
                    config_path=f"{M}/piper/en_US-joe-medium.onnx.json")
list(v.synthesize("Ready."))
""",
    "wake": """
import numpy as np
from openwakeword.model import Model
w = f"{M}/openwakeword"
m = Model(wakeword_models=[f"{w}/hey_jarvis_v0.1.onnx"], inference_framework="onnx",
          melspec_model_path=f"{w}/melspectrogram.onnx",
          embedding_model_path=f"{w}/embedding_model.onnx")
m.predict(np.zeros(1280, dtype=np.int16))
""",
}

PRELUDE = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
M = sys.argv[1]
base = rss()
"""

CONFIG = """
[paths]
state_dir = "{state}"
[llm]
enabled = true
model = "{models}/llm/SmolLM2-135M-Instruct.gguf"
context = 2048
[voice]
enabled = true
"""


def measured(role: str, models: str) -> int:
    code = PRELUDE + LOAD[role] + "\nprint(rss() - base)\n"
    out = subprocess.run(
        [sys.executable, "-c", code, models], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one doctor run instead of five")
    args = ap.parse_args()
    models = str(need_test_models())
    with tempfile.TemporaryDirectory(prefix="ld-bench-") as tmp:
        cfg = Path(tmp) / "loomd.toml"
        text = CONFIG.format(state=f"{tmp}/state", models=models)
        cfg.write_text(text)
        # the voice models where the doctor looks: <state_dir>/models/<kind>/
        (Path(tmp) / "state/models").mkdir(parents=True)
        for kind in ("whisper", "piper", "openwakeword"):
            (Path(tmp) / "state/models" / kind).symlink_to(Path(models) / kind)
        ctx = load_context(cfg, f"ipc://{tmp}/none.sock")
        estimate = model_need_bytes(ctx)
        rows = []
        for role in ("llm", "stt", "tts", "wake"):
            real = measured(role, models)
            rows.append((role, real, estimate[role], estimate[role] / real))
        runs = 1 if args.quick else 5
        t_all, t_cheap = [], []
        cheap = [c for c in all_checks() if c.name not in ("audio", "gpu", "models")]
        for _ in range(runs):
            ctx = load_context(cfg, f"ipc://{tmp}/none.sock")
            t0 = time.perf_counter()
            run_checks(ctx)
            t_all.append(time.perf_counter() - t0)
            ctx = load_context(cfg, f"ipc://{tmp}/none.sock")
            t0 = time.perf_counter()
            run_checks(ctx, cheap)
            t_cheap.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'role':<6} {'raw load (MB)':>14} {'doctor estimate (MB)':>21} {'ratio':>6}")
    for role, real, est, ratio in rows:
        print(f"{role:<6} {real / MB:>14.1f} {est / MB:>21.1f} {ratio:>6.2f}")
    all_s, cheap_s = min(t_all), min(t_cheap)
    print(f"doctor, all {len(all_checks())} checks (no daemon): {all_s * 1000:.0f} ms")
    print(f"doctor, {len(cheap)} cheap checks: {cheap_s * 1000:.0f} ms")
    print(f"peak RSS of the doctor process: {peak_mb:.0f} MB")
    print(
        json.dumps(
            {
                "bench": "doctor",
                "estimate_ratio": {r: round(x, 2) for r, _, _, x in rows},
                "raw_load_mb": {r: round(real / MB, 1) for r, real, _, _ in rows},
                "estimate_mb": {r: round(est / MB, 1) for r, _, est, _ in rows},
                "doctor_all_ms": round(all_s * 1000, 1),
                "doctor_cheap_ms": round(cheap_s * 1000, 1),
                "peak_rss_mb": round(peak_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
