"""`loomctl models list|fetch|verify|remove|install`: run locally, no daemon needed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from loomd.models.catalogue import Model, catalogue, select
from loomd.models.store import ModelsError, ModelState, Store, check_readable, installed, mb
from loomd.settings import default_config_path, load_config, resolve_paths

# The packaged daemon's state directory (systemd's StateDirectory=loomd).
SYSTEM_STATE_DIR = Path("/var/lib/loomd")
RESTART_HINT = (
    "a running loomd picks them up on `sudo systemctl reload loomd` (voice and llm, "
    'enabled = "auto", start once their models are there); a component already running '
    "keeps the files it loaded until `sudo systemctl restart loomd`"
)


def models_dir(args: argparse.Namespace) -> Path:
    """--models-dir, else what the config says (`[paths] models_dir`, else
    `<state_dir>/models`), else the packaged daemon's folder when it exists (as loomctl finds
    the packaged socket), else the per-user state folder a checkout's daemon uses."""
    if args.models_dir:
        return Path(args.models_dir)
    path = Path(args.config) if args.config else default_config_path()
    settings = load_config(path)
    resolved = resolve_paths(settings).models_dir
    explicit = settings.paths.models_dir or settings.paths.state_dir
    if explicit or os.environ.get("STATE_DIRECTORY") or os.geteuid() == 0:
        return resolved
    try:
        packaged = SYSTEM_STATE_DIR.exists()
    except PermissionError:
        packaged = True
    return SYSTEM_STATE_DIR / "models" if packaged else resolved


def _models(args: argparse.Namespace) -> list[Model]:
    return catalogue(Path(args.catalogue) if args.catalogue else None)


def _state_word(st: ModelState) -> str:
    if not st.present:
        return "partly installed" if any(f.present for f in st.files) else "-"
    return {"ok": "verified", "bad": "BAD", "unchecked": "installed"}[st.verified]


def _list(args: argparse.Namespace) -> int:
    models = _models(args)
    root = models_dir(args)
    check_readable(root)
    states = {s.id: s for s in installed(root, verify=args.verify, models=models)}
    if args.json:
        out: list[dict[str, Any]] = []
        for m in models:
            st = states[m.id]
            out.append(
                {
                    "id": m.id,
                    "kind": m.kind,
                    "language": m.language,
                    "bytes": m.bytes,
                    "default": m.default,
                    "licence": m.licence,
                    "description": m.description,
                    "present": st.present,
                    "verified": st.verified,
                    "problem": st.problem,
                    "notes": list(m.notes),
                    "files": [
                        {
                            "path": mf.path,
                            "bytes": mf.bytes,
                            "sha256": mf.sha256,
                            "accepts": [
                                {"algo": d.algo, "hash": d.hexdigest, "origin": d.origin}
                                for d in mf.accepts
                            ],
                            "sources": [s.url for s in mf.sources],
                        }
                        for mf in m.files
                    ],
                }
            )
        print(json.dumps({"models_dir": str(root), "models": out}, indent=2))
        return 1 if any(s.verified == "bad" for s in states.values()) else 0
    print(f"models in {root}" + ("" if args.verify else " (sizes checked; --verify hashes)"))
    print(f"  {'ID':28} {'KIND':5} {'LANG':4} {'SIZE':>9} {'DEFAULT':7} STATE")
    for m in models:
        st = states[m.id]
        size = mb(m.bytes) if all(f.bytes for f in m.files) else f"~{mb(m.bytes)}"
        lang, default = m.language or "-", "yes" if m.default else ""
        print(f"  {m.id:28} {m.kind:5} {lang:4} {size:>9} {default:7} {_state_word(st)}")
        if st.problem:
            print(f"      problem: {st.problem}")
        for n in m.notes:
            print(f"      note: {n}")
    return 1 if any(s.verified == "bad" for s in states.values()) else 0


def _fetch(args: argparse.Namespace) -> int:
    from loomd.models.download import Policy, Progress
    from loomd.models.fetch import Fetcher

    models = select(_models(args), args.ids)
    store = Store(models_dir(args))
    policy = Policy(timeout_s=args.http_timeout, retries=args.retries)
    started = time.monotonic()
    keep = Path(args.keep_archives).resolve() if args.keep_archives else None
    fetcher = Fetcher(store, Progress(), policy, keep_archives=keep)
    report = fetcher.run(models)
    secs = time.monotonic() - started
    for mid in report.already:
        print(f"{mid}: already installed and verified")
    for mid in report.installed:
        print(f"{mid}: installed")
    for mid, why in report.failed.items():
        print(f"{mid}: FAILED: {why}", file=sys.stderr)
    if report.installed:
        print(
            f"fetched {len(report.installed)} model(s) into {store.root}: "
            f"{mb(report.downloaded_bytes)} downloaded in {secs:.1f} s"
        )
        print(RESTART_HINT)
    return 1 if report.failed else 0


def _verify(args: argparse.Namespace) -> int:
    all_models = _models(args)
    root = models_dir(args)
    check_readable(root)
    chosen = select(all_models, args.ids) if args.ids else all_models
    states = installed(root, verify=True, models=chosen)
    bad = 0
    checked = 0
    for st in states:
        if not st.present and not args.ids and not any(f.present for f in st.files):
            continue  # not installed: nothing to verify
        checked += 1
        if st.verified == "ok":
            print(f"{st.id}: ok")
            continue
        bad += 1
        files = [f for f in st.files if f.verified == "bad" or not f.present]
        for f in files:
            print(f"{st.id}: BAD {root / f.path}: {f.problem}", file=sys.stderr)
    if not checked:
        print(f"no catalogue model is installed in {root}")
    return 1 if bad else 0


def _remove(args: argparse.Namespace) -> int:
    models = select(_models(args), args.ids)
    store = Store(models_dir(args))
    store.check_writable("remove")
    if not store.root.is_dir():
        print(f"nothing is installed in {store.root}")
        return 0
    with store.locked("remove"):
        for m in models:
            if m.id not in args.ids:
                continue  # select() adds what a model requires; remove only what was named
            gone = store.remove(m)
            print(f"{m.id}: removed {', '.join(gone)}" if gone else f"{m.id}: was not installed")
    return 0


def _install(args: argparse.Namespace) -> int:
    from loomd.models.offline import install

    models = _models(args)
    store = Store(models_dir(args))
    report = install(Path(args.source), store, models)
    by_path = {mf.path: m.id for m in models for mf in m.files}
    for path, src in report.installed.items():
        print(f"installed {path} ({by_path[path]})" + ("" if src == path else f" from {src}"))
    for path in report.already:
        print(f"already installed and verified: {path}")
    for name, why in report.bad.items():
        print(f"REJECTED {name}: {why}", file=sys.stderr)
    if report.unmatched:
        print(f"not in the catalogue (left alone): {', '.join(report.unmatched)}")
    states = installed(store.root, models=models)
    incomplete = [s.id for s in states if not s.present and any(f.present for f in s.files)]
    for mid in incomplete:
        print(f"{mid}: still incomplete (some of its files are missing)")
    if report.installed:
        print(f"installed {len(report.installed)} file(s) into {store.root}")
        print(RESTART_HINT)
    elif not report.bad:
        print("nothing new installed")
    return 1 if report.bad else 0


def add_parser(cmds: Any) -> None:
    """`loomctl models ...` (registered by loomd.ctl.build_parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        help="the models directory (default: [paths] of the config, i.e. <state_dir>/models)",
    )
    common.add_argument(
        "--config", help="loomd config file (default: $LOOMD_CONFIG, /etc/loomd/loomd.toml)"
    )
    common.add_argument(
        "--catalogue",
        help="a catalogue file instead of the shipped one (also $LOOMD_MODELS_CATALOGUE)",
    )
    p = cmds.add_parser(
        "models",
        help="list, fetch, verify, remove or install models (runs locally)",
        description="Models for voice and the LLM, from loomd's catalogue, in the models "
        "directory the daemon reads.",
    )
    sub = p.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    ls = sub.add_parser("list", parents=[common], help="the catalogue and what is installed")
    ls.add_argument("--verify", action="store_true", help="hash installed files (slower)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list, local=True)
    fe = sub.add_parser(
        "fetch", parents=[common], help="download models (default: the default set)"
    )
    fe.add_argument("ids", nargs="*", metavar="ID")
    fe.add_argument("--http-timeout", type=float, default=30.0, help="seconds (default 30)")
    fe.add_argument("--retries", type=int, default=3, help="retries per transfer (default 3)")
    fe.add_argument(
        "--keep-archives",
        metavar="DIR",
        help="keep the downloaded archives (wheels) in DIR, and use those already there",
    )
    fe.set_defaults(func=_fetch, local=True)
    ve = sub.add_parser("verify", parents=[common], help="recompute checksums (exit 1 if bad)")
    ve.add_argument("ids", nargs="*", metavar="ID")
    ve.set_defaults(func=_verify, local=True)
    rm = sub.add_parser("remove", parents=[common], help="delete installed models")
    rm.add_argument("ids", nargs="+", metavar="ID")
    rm.set_defaults(func=_remove, local=True)
    ins = sub.add_parser(
        "install", parents=[common], help="install models from a folder or tarball (offline)"
    )
    ins.add_argument("source", metavar="DIR|TARBALL")
    ins.set_defaults(func=_install, local=True)


def run(args: argparse.Namespace) -> int:
    """What loomctl's main() calls for these local commands."""
    try:
        result: int = args.func(args)
        return result
    except ModelsError as exc:
        print(f"loomctl: {exc}", file=sys.stderr)
        return 1
