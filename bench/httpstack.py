"""The HTTP stack: candidates for loomd's one HTTP server, and before vs after.

    .venv/bin/python bench/httpstack.py [--quick] [--before REV]

Each candidate serves the same `/metrics` body (a daemon-sized set of families: counters
and gauges with labels, latency histograms) from a fresh interpreter. Measured per
candidate: `ready_ms` (spawn to accepting connections, parent's clock: interpreter,
imports, listen), the child's own `import_ms`, RSS once listening and after the scrapes,
and sequential scrapes/s from one client over a new connection each (the old server closes
every connection). Candidates:

- `before`: the hand-written HTTP/1.1 server and exposition of REV (default: the commit
  this branch left main at), run from a `git archive` of that tree, in the same run;
- `aiohttp`: aiohttp.web, the same hand-written exposition;
- `uvicorn-h11`, `uvicorn-httptools`: Starlette on uvicorn (pure-Python h11 parser, or
  httptools), the same hand-written exposition;
- `after`: loomd's server as it is now (`loomd.web.http`, Starlette on uvicorn, the
  exposition through prometheus_client's own registry).

Then the exposition alone, in this process: µs per rendering of the same families,
hand-written (`before`) vs prometheus_client (`after`); and the whole daemon of each tree
(default components, the status page on): spawn to READY, RSS, its own /metrics
scrapes/s, `/api/status` p50. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BASE_REV = "848299d"  # main's tip when the one-stack work began

CANDIDATES = ("before", "aiohttp", "uvicorn-h11", "uvicorn-httptools", "after")


def families(module: Any = None) -> list[Any]:
    """About what a daemon with voice, llm, mqtt and agents running exposes (~60
    families, 8 of them histograms with labels), from `module`'s classes (loomd.metrics
    unless told)."""
    if module is None:
        import loomd.metrics as module
    Family, Histogram = module.Family, module.Histogram

    out: list[Any] = []
    for i in range(40):
        out.append(
            Family(
                f"loomd_bench_counter_{i}_total", "counter", f"Counter {i}.",
                [({"component": f"c{j}", "outcome": "ok"}, float(i * j)) for j in range(3)],
            )
        )  # fmt: skip
    for i in range(12):
        out.append(Family(f"loomd_bench_gauge_{i}", "gauge", f"Gauge {i}.", [({}, i / 3)]))
    for i in range(8):
        samples = []
        for stage in ("a", "b"):
            h = Histogram()
            for k in range(200):
                h.observe((k % 37) * 0.0007)
            samples.append(({"stage": stage}, h))
        out.append(Family(f"loomd_bench_latency_{i}_seconds", "histogram", "Latency.", samples))
    return out


# -- the child: one candidate --------------------------------------------------------------
def serve(kind: str) -> None:
    t0 = time.perf_counter()
    import asyncio
    import socket

    fams = families()
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def ready(t_imp: float) -> None:
        msg = {"port": port, "import_ms": round((t_imp - t0) * 1000, 1)}
        print(json.dumps(msg), flush=True)

    async def main() -> None:
        if kind == "before":
            from loomd.metrics import render
            from loomd.web.http import MetricsServer

            t_imp = time.perf_counter()
            sock.close()  # the old server binds its own: give it the port back
            server = MetricsServer("127.0.0.1", port, lambda: fams)
            await server.start()
            ready(t_imp)
            await asyncio.Event().wait()
        elif kind == "aiohttp":
            from aiohttp import web

            from loomd.metrics import CONTENT_TYPE, render

            t_imp = time.perf_counter()

            async def metrics(request: Any) -> Any:
                body = render(fams).encode()
                return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

            app = web.Application()
            app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            ready(t_imp)
            await asyncio.Event().wait()
        elif kind.startswith("uvicorn-"):
            import uvicorn
            from starlette.applications import Starlette
            from starlette.responses import Response
            from starlette.routing import Route

            from loomd.metrics import CONTENT_TYPE, render

            t_imp = time.perf_counter()

            async def metrics(request: Any) -> Any:
                return Response(render(fams).encode(), headers={"Content-Type": CONTENT_TYPE})

            app = Starlette(routes=[Route("/metrics", metrics)])
            config = uvicorn.Config(
                app, http=kind.removeprefix("uvicorn-"), log_config=None, lifespan="off",
                access_log=False,
            )  # fmt: skip
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
                await asyncio.sleep(0.001)
            ready(t_imp)
            await task
        elif kind == "after":
            from loomd.web.http import MetricsServer

            t_imp = time.perf_counter()
            sock.close()
            server = MetricsServer("127.0.0.1", port, lambda: fams)
            await server.start()
            ready(t_imp)
            await asyncio.Event().wait()
        else:
            raise SystemExit(f"unknown candidate {kind}")

    import uvloop

    uvloop.run(main())


# -- the parent ----------------------------------------------------------------------------
def scrape(
    port: int, expect: bytes = b"loomd_bench_latency_7_seconds_bucket", path: str = "/metrics"
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or expect not in body:
            raise RuntimeError(f"bad scrape: {resp.status} {body[:200]!r}")
        return len(body)
    finally:
        conn.close()


def measure(kind: str, env: dict[str, str], seconds: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind}: the server did not start")
        ready_ms = (time.perf_counter() - t0) * 1000
        info = json.loads(line)
        proc = psutil.Process(child.pid)
        rss0 = proc.memory_info().rss / 2**20
        size = scrape(info["port"])
        for _ in range(20):  # warm up
            scrape(info["port"])
        n, t1 = 0, time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            scrape(info["port"])
            n += 1
        rate = n / (time.perf_counter() - t1)
        return {
            "ready_ms": round(ready_ms, 1),
            "import_ms": info["import_ms"],
            "rss_mb": round(rss0, 2),
            "rss_after_mb": round(proc.memory_info().rss / 2**20, 2),
            "scrapes_per_s": round(rate, 1),
            "body_bytes": size,
        }
    finally:
        child.kill()
        child.wait()


def exposition_us(tree: Path | None, rounds: int) -> dict[str, float]:
    """µs per rendering of the same families: the hand-written `render` (of `tree`, the
    before tree) and the current exposition."""
    import loomd.metrics

    out: dict[str, float] = {}
    from loomd.metrics import Exposition

    fams = families(loomd.metrics)
    expo = Exposition(lambda: fams)
    for name, fn in (("before", None), ("after", expo.render)):
        if fn is None:
            code = (tree / "loomd" / "metrics.py") if tree else None
            if code is None:
                continue
            import types

            old = types.ModuleType("old_metrics")
            sys.modules["old_metrics"] = old  # dataclass-like NamedTuples look it up
            exec(compile(code.read_text(), str(code), "exec"), old.__dict__)
            old_fams = families(old)

            def fn(render: Any = old.render, fams: Any = old_fams) -> bytes:
                return render(fams).encode()  # type: ignore[no-any-return]

        fn()
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        out[name] = round((time.perf_counter() - t) / rounds * 1e6, 1)
    return out


def daemon(tree: Path, root: Path, seconds: float) -> dict[str, Any]:
    """The whole daemon of `tree` with the default components and the status page:
    spawn to READY, RSS once ready, its own /metrics scrapes/s and /api/status p50."""
    from bench.harness import daemon_config
    from bench.services import Notifications

    root.mkdir(parents=True)
    sock = __import__("socket").create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cfg = daemon_config(root, f"[metrics]\nport = {port}\n", daemon='log_level = "warning"')
    notify = Notifications(root / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(ROOT)])
    t0 = time.perf_counter()
    with open(root / "loomd.log", "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loomd.daemon", "--config", str(cfg)],
            env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=root,
        )  # fmt: skip
        try:
            notify.wait_for("READY=1", 60)
            ready_ms = (time.perf_counter() - t0) * 1000
            ps = psutil.Process(proc.pid)
            time.sleep(1.0)
            rss = ps.memory_info().rss / 2**20
            scrape(port, b"loomd_")
            n, t1 = 0, time.perf_counter()
            while time.perf_counter() - t1 < seconds:
                scrape(port, b"loomd_")
                n += 1
            rate = n / (time.perf_counter() - t1)
            lat = []
            for _ in range(50):
                t2 = time.perf_counter()
                scrape(port, b'"daemon"', "/api/status")
                lat.append((time.perf_counter() - t2) * 1000)
            lat.sort()
            return {
                "ready_ms": round(ready_ms, 1),
                "rss_mb": round(rss, 2),
                "rss_after_mb": round(ps.memory_info().rss / 2**20, 2),
                "scrapes_per_s": round(rate, 1),
                "api_status_p50_ms": round(lat[len(lat) // 2], 2),
            }
        finally:
            proc.terminate()
            proc.wait(20)
            notify.close()


def before_tree(rev: str, into: Path) -> Path:
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "loomd"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--before", default=BASE_REV, help="the revision to measure as `before`")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated candidates")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    seconds, repeats = (1.5, 1) if args.quick else (4.0, 3)
    kinds = args.only.split(",") if args.only else list(CANDIDATES)
    res: dict[str, Any] = {"bench": "http", "quick": args.quick, "before_rev": args.before}
    with tempfile.TemporaryDirectory(prefix="loomd-bench-http-") as tmp:
        tree = before_tree(args.before, Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for _ in range(repeats):  # alternate, so background load hits every candidate alike
            for kind in kinds:
                env = dict(os.environ)
                # the stack candidates serve the old hand-written exposition: only the
                # server differs from `before`
                path = str(ROOT) if kind == "after" else str(tree)
                env["PYTHONPATH"] = os.pathsep.join([path, str(ROOT)])
                runs[kind].append(measure(kind, env, seconds))
                print(f"[bench] {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)
        for kind, rs in runs.items():
            best = {
                "ready_ms": min(r["ready_ms"] for r in rs),
                "import_ms": min(r["import_ms"] for r in rs),
                "rss_mb": min(r["rss_mb"] for r in rs),
                "rss_after_mb": min(r["rss_after_mb"] for r in rs),
                "scrapes_per_s": max(r["scrapes_per_s"] for r in rs),
                "body_bytes": rs[0]["body_bytes"],
            }
            res[kind] = best
        sys.path.insert(0, str(ROOT))
        res["exposition_us"] = exposition_us(tree, 50 if args.quick else 300)
        if not args.only:
            drs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for i in range(repeats):
                for name, t in (("before", tree), ("after", ROOT)):
                    drs[name].append(daemon(t, Path(tmp) / f"d-{name}-{i}", seconds))
                    print(f"[bench] daemon {name}: {drs[name][-1]}", file=sys.stderr, flush=True)
            res["daemon"] = {
                name: {k: (max if k == "scrapes_per_s" else min)(r[k] for r in rs) for k in rs[0]}
                for name, rs in drs.items()
            }
    if "before" in res and "after" in res:
        b, a = res["before"], res["after"]
        res["after_vs_before"] = {
            "ready_ms": round(a["ready_ms"] / b["ready_ms"], 2),
            "rss_mb": round(a["rss_mb"] / b["rss_mb"], 2),
            "scrapes_per_s": round(a["scrapes_per_s"] / b["scrapes_per_s"], 2),
        }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
