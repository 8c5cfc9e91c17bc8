"""The seam end to end: a component registered by a test package (entry point, not shipped)
shows up in status and metrics, answers `loomctl probe <op>`, reloads live, reports what
needs a restart, and stops the watchdog pings when it turns unhealthy. A component whose
module is missing leaves the daemon running and says how to install it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LoomdProcess, free_port, loomctl, loomctl_sub

PLUGIN = Path(__file__).parent / "plugin"
ENV = {"PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")])}


def status(d: LoomdProcess) -> dict:  # type: ignore[type-arg]
    r = loomctl(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def probed(short_tmp: Path) -> Iterator[LoomdProcess]:
    with LoomdProcess(short_tmp, env=ENV) as d:
        yield d


def test_a_registered_component_is_served_everywhere(probed: LoomdProcess) -> None:
    port = free_port()
    probed.write_config(f"[metrics]\nenabled = true\nport = {port}\n[probe]\nport = 7\n")
    probed.start()

    r = loomctl(probed, "probe", "hello", "ann")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"text": "hello, ann"}
    assert json.loads(loomctl(probed, "probe", "hello", "who=bob").stdout)["text"] == "hello, bob"
    r = loomctl(probed, "probe", "nope")
    assert r.returncode == 1 and "probe has no operation 'nope'" in r.stderr
    r = loomctl(probed, "probe", "hello", "a", "b")
    assert r.returncode == 1 and "too many arguments" in r.stderr

    st = status(probed)
    probe = st["components"]["probe"]
    assert probe["state"] == "running" and probe["healthy"] is True
    assert probe["status"] == {"greeting": "hello", "port": 7, "calls": 2}
    text = loomctl(probed, "status").stdout
    assert re.search(r"^probe \(running\)\n  greeting: hello\n  port: 7\n  calls: 2$", text, re.M)
    assert "probe.hello [who]  - greet someone" in loomctl(probed, "ops").stdout

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert "loomd_probe_calls_total 2" in metrics
    assert "probe_outside_its_prefix" not in metrics  # a family outside loomd_probe_ is refused
    assert "must not" not in metrics
    r = loomctl(probed, "greet", "dee")  # its friendly command, from the `loomd.cli` group
    assert (r.returncode, r.stdout) == (0, "hello, dee\n"), r.stderr

    # Reload: the reloadable key applies live, the other is reported and keeps its value.
    probed.config.write_text(
        probed.config.read_text().replace("port = 7", 'port = 8\ngreeting = "hi"')
    )
    assert probed.notify is not None
    probed.signal(signal.SIGHUP)
    probed.notify.wait_for("RELOADING=1")
    probed.notify.wait_for("READY=1")
    assert json.loads(loomctl(probed, "probe", "hello", "cy").stdout)["text"] == "hi, cy"
    assert status(probed)["components"]["probe"]["status"]["port"] == 7  # still in effect
    log = probed.log.read_text()
    assert "reload: probe.port need a restart to take effect" in log
    assert "configuration reloaded (probe.greeting)" in log


def test_an_unhealthy_component_stops_the_watchdog(probed: LoomdProcess) -> None:
    probed.start(extra_env={"WATCHDOG_USEC": "200000"})  # a ping every 100 ms
    assert probed.notify is not None
    probed.notify.wait_for("WATCHDOG=1")
    sub = loomctl_sub(probed, "loomd.error", 1)
    try:
        for _ in range(100):  # until the subscription is live
            subs = status(probed)["components"]["bus"]["status"]["subscriptions"]
            if any(s["pattern"] == "loomd.error" for s in subs):
                break
        assert loomctl(probed, "probe", "crash").returncode == 0
        out, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
    error = json.loads(out)
    assert "probe: task boom crashed: RuntimeError: probe task exploded" in str(error["payload"])

    probe = status(probed)["components"]["probe"]
    assert probe["healthy"] is False
    assert "task boom crashed" in probe["reason"]
    probed.notify.drain()  # pings sent before it turned unhealthy
    with pytest.raises(TimeoutError):  # 5 ping intervals without a ping
        probed.notify.wait_for("WATCHDOG=1", timeout=0.5)
    assert (
        "unhealthy: withholding watchdog pings (probe: task boom crashed" in probed.log.read_text()
    )

    assert loomctl(probed, "probe", "heal").returncode == 0
    probed.notify.wait_for("WATCHDOG=1", timeout=5)


def test_a_component_with_a_missing_package_is_named_with_its_fix(probed: LoomdProcess) -> None:
    probed.start()
    needy = status(probed)["components"]["needy"]
    assert needy["state"] == "unavailable"
    fix = "apt install loomd-needy or pip install 'loomd[needy]'"
    assert needy["reason"] == f"missing loomd_test_no_such_module: {fix}"
    assert (
        "needy (unavailable: missing loomd_test_no_such_module" in loomctl(probed, "status").stdout
    )
    r = loomctl(probed, "needy", "anything")
    assert r.returncode == 1 and "component needy is unavailable" in r.stderr

    check = subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", str(probed.config), "--check"],
        capture_output=True, text=True, timeout=20, env={**os.environ, **ENV},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert re.search(
        rf"^  needy +enabled +missing loomd_test_no_such_module \({re.escape(fix)}\)",
        check.stdout,
        re.M,
    )
    assert re.search(r"^  probe +enabled +available", check.stdout, re.M)


def test_stop_drains_in_phases_and_a_second_signal_cuts_it_short(probed: LoomdProcess) -> None:
    probed.config.write_text(
        probed.config.read_text().replace("drain_timeout_s = 2.0", "drain_timeout_s = 120")
    )
    probed.start()
    assert loomctl(probed, "probe", "hold", "3").returncode == 0
    assert probed.notify is not None
    probed.signal(signal.SIGTERM)
    lines = probed.notify.wait_for("STOPPING=1")
    probed.notify.wait_for("EXTEND_TIMEOUT_USEC=125000000")  # the drain deadline + 5 s grace
    assert "STATUS=draining" in lines
    # Still alive and answering while it drains (publishes are no longer taken).
    assert status(probed)["components"]["probe"]["state"] == "running"
    probed.signal(signal.SIGTERM)
    assert probed.proc is not None and probed.proc.wait(10) == 0
    log = probed.log.read_text()
    assert "second stop signal: cutting work still in flight (probe 3)" in log
    assert "loomd stopped" in log


def test_the_registry_imports_no_model_or_protocol_library() -> None:
    """An idle daemon never imports llama.cpp, whisper, onnxruntime and friends: loading
    every registered component class (and its settings) must not pull them in."""
    heavy = (
        "llama_cpp", "pywhispercpp", "openwakeword", "onnxruntime", "piper", "numpy",
        "paho", "mcp", "wyoming", "uvicorn", "starlette", "httpx", "aiohttp", "openai",
    )  # fmt: skip
    code = (
        "import sys, loomd.components as c, loomd.settings as k\n"
        "assert c.registry().classes() and k.Settings()\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported at registry load: {r.stdout.strip()}"


def test_friendly_commands_come_from_the_registry_not_the_component_class() -> None:
    """`loomctl` builds its parser from `BUILTIN_CLI` without importing components, so a
    `cli` attribute on a component class would be silently lost: none may have one, and
    every builtin entry names a function that exists."""
    from loomd.components import BUILTIN_CLI, registry

    reg = registry()
    assert [n for n, cls in reg.classes().items() if hasattr(cls, "cli")] == []
    assert set(BUILTIN_CLI) <= set(reg.names())
    assert all(callable(reg.cli(name)) for name in BUILTIN_CLI)
