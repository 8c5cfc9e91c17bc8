"""The daemon as a process: sd_notify, reload, drain, config errors, loomctl, metrics."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from loomd.components import registry
from tests.conftest import LoomdProcess, free_port, loomctl, loomctl_sub


def full_status(d: LoomdProcess) -> dict:  # type: ignore[type-arg]
    r = loomctl(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def status(d: LoomdProcess) -> dict:  # type: ignore[type-arg]
    """The daemon block plus the bus block, flattened (what most tests look at)."""
    st = full_status(d)
    return {**st["daemon"], **st["components"]["bus"]["status"]}


def test_sd_notify_ready_watchdog_reload_stopping(loomd_proc: LoomdProcess) -> None:
    d = loomd_proc
    d.start(extra_env={"WATCHDOG_USEC": "300000"})
    assert d.notify is not None
    first = d.notify.seen.index("READY=1")
    assert any(line.startswith("STATUS=") for line in d.notify.seen[first:]), d.notify.seen
    for _ in range(3):  # every 150 ms: three pings arrive well within the deadline
        d.notify.wait_for("WATCHDOG=1", timeout=5)
    d.signal(signal.SIGHUP)
    lines = d.notify.wait_for("RELOADING=1", timeout=5)
    assert any(line.startswith("MONOTONIC_USEC=") for line in lines)
    d.notify.wait_for("READY=1", timeout=5)
    d.signal(signal.SIGTERM)
    d.notify.wait_for("STOPPING=1", timeout=5)
    assert d.proc is not None
    assert d.proc.wait(10) == 0
    log = d.log.read_text()
    assert "ready: bus at ipc://" in log and "loomd stopped" in log


def test_ready_only_after_socket_is_bound(daemon: LoomdProcess) -> None:
    assert daemon.socket.exists()
    assert oct(daemon.socket.stat().st_mode & 0o777) == oct(0o660)
    assert status(daemon)["device_id"] == "test-box"


def test_reload_applies_changes_and_keeps_running_config_when_broken(daemon: LoomdProcess) -> None:
    pid = status(daemon)["pid"]
    assert daemon.notify is not None
    daemon.write_config(device_id="renamed-box")
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    st = status(daemon)
    assert (st["device_id"], st["pid"], st["reloads"]) == ("renamed-box", pid, 1)

    daemon.config.write_text(daemon.config.read_text() + "[bus]\nmax_frame_bytes = -1\n")
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    st = status(daemon)
    assert (st["device_id"], st["pid"], st["reloads"]) == ("renamed-box", pid, 1)
    log = daemon.log.read_text()
    assert "reload failed" in log and "bus.max_frame_bytes = -1" in log
    assert "keeping the running configuration" in log


def test_sigterm_drains_and_exits_zero(daemon: LoomdProcess) -> None:
    r = loomctl(daemon, "pub", "control.test", '{"n": 1}')
    assert r.returncode == 0, r.stderr
    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def test_second_instance_refused(daemon: LoomdProcess) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 1
    assert "another loomd is already running" in r.stderr
    assert status(daemon)["device_id"] == "test-box"  # the first one is untouched


# -- config errors: one per class of mistake, checked by message ----------------------------
CONFIG_ERRORS = [
    ("[bus]\nmax_frame_bytz = 5\n", "bus.max_frame_bytz", "did you mean bus.max_frame_bytes"),
    ("[buss]\nx = 1\n", "buss", "unknown"),
    ('[bus]\ntcp_port = "80"\n', "bus.tcp_port = '80'", "integer"),
    ("[bus]\ntcp_port = 70000\n", "bus.tcp_port = 70000", "from 1 to 65535"),
    ('[daemon]\nlog_level = "loud"\n', "daemon.log_level = 'loud'", "debug"),
    ('[bus]\ndurable = ["a..b"]\n', "bus.durable", "pattern"),
    ("[bus]\ntcp_enabled = yes\n", "<file>", "line"),
    (
        "[state]\nmap_size_mb = 64\nmax_map_size_mb = 8\n",
        "state.max_map_size_mb = 8",
        "map_size_mb",
    ),
]


@pytest.mark.parametrize(("toml", "key", "hint"), CONFIG_ERRORS)
def test_config_error_stops_startup_with_one_line(
    short_tmp: Path, toml: str, key: str, hint: str
) -> None:
    cfg = short_tmp / "bad.toml"
    cfg.write_text(toml)
    r = subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert key in lines[0] and hint in lines[0], lines[0]
    assert str(cfg) in lines[0]


def test_missing_config_file(short_tmp: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", str(short_tmp / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2 and "nope.toml" in r.stderr


def test_check_reports_config_and_features(short_tmp: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loomd.daemon", "--config", "config/loomd.toml", "--check"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=Path(__file__).parent.parent,
    )
    assert r.returncode == 0, r.stderr
    assert "config OK" in r.stdout
    for name in registry().names():  # every registered component, from the one registry
        state = r"(enabled|disabled|auto: on|auto: off)"
        assert re.search(rf"^  {name} +{state} +(available|missing)", r.stdout, re.M), (
            name,
            r.stdout,
        )


# -- loomctl ----------------------------------------------------------------------------------
def test_loomctl_without_daemon_says_so(short_tmp: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(short_tmp / "bus.sock"), "status"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"loomctl: loomd is not running (no socket at {short_tmp / 'bus.sock'})"
    ]


# A user outside group loomd is refused: checked as a real second user in the
# systemd-nspawn system test (tests/system), where the package creates the group.


def test_loomctl_pub_sub_and_state(daemon: LoomdProcess) -> None:
    sub = loomctl_sub(daemon, "demo.#", 2)
    try:
        # wait until the subscription is registered (status lists it), then publish
        for _ in range(200):
            if any(s["pattern"] == "demo.#" for s in status(daemon)["subscriptions"]):
                break
        else:
            pytest.fail("subscription never appeared")
        payload_file = daemon.root / "p.json"
        payload_file.write_text('{"temp": 21.5}')
        assert loomctl(daemon, "pub", "demo.kitchen", '{"on": true}').returncode == 0
        assert (
            loomctl(daemon, "pub", "demo.hall", f"@{payload_file}", "--qos", "realtime").returncode
            == 0
        )
        out, err = sub.communicate(timeout=30)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["topic"], e["payload"]) for e in events] == [
        ("demo.kitchen", {"on": True}),
        ("demo.hall", {"temp": 21.5}),
    ]
    assert events[0]["sender"] == "loomctl"

    assert loomctl(daemon, "state", "put", "lamp", '{"on": true, "level": 3}').returncode == 0
    r = loomctl(daemon, "state", "get", "lamp")
    assert r.returncode == 0 and json.loads(r.stdout) == {"on": True, "level": 3}
    assert loomctl(daemon, "state", "ls").stdout.split() == ["lamp"]
    r = loomctl(daemon, "state", "get", "nope")
    assert r.returncode == 1 and "no key" in r.stderr

    r = loomctl(daemon, "pub", "demo.x", "{not json")
    assert r.returncode == 1 and "not JSON" in r.stderr

    human = loomctl(daemon, "status")
    assert human.returncode == 0
    assert "loomd" in human.stdout and "demo.kitchen" in human.stdout


def test_metrics_endpoint(loomd_proc: LoomdProcess) -> None:
    port = free_port()
    loomd_proc.write_config(f"[metrics]\nenabled = true\nport = {port}\n")
    loomd_proc.start()

    def scrape() -> tuple[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = resp.read().decode()
        (count,) = [x for x in text.splitlines() if x.startswith("loomd_bus_events_in_total ")]
        return text, float(count.split()[1])

    # The components' own start-up traffic (capability offers, the assist's vocabulary)
    # counts too: the publish is one more.
    _, before = scrape()
    assert loomctl(loomd_proc, "pub", "demo.metric", "1").returncode == 0
    text, after = scrape()
    assert after >= before + 1, (before, after)
    for name in (
        "loomd_bus_events_dropped_total",
        "loomd_bus_queue_depth",
        "loomd_daemon_loop_lag_seconds_bucket",
        "loomd_bus_publish_deliver_seconds_count",
        'loomd_daemon_component_up{component="state",state="running"} 1',
        "loomd_state_used_bytes",
    ):
        assert name in text, name
