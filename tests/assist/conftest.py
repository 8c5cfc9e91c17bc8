"""A daemon with the example home, a real mosquitto, the agents, home and assist components."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridges.conftest import (  # noqa: F401 - the fixture and the async test runner
    Mosquitto,
    broker,
    pytest_pyfunc_call,
)
from tests.conftest import LoomdProcess, loomctl, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "home" / "home.toml"


def home_config(broker: Mosquitto, extra: str = "") -> str:  # noqa: F811
    return (
        f"[mqtt]\nenabled = true\nport = {broker.port}\ndiscovery = false\n"
        "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        "[assist]\nenabled = true\nllm = false\nconfirm_timeout_s = 30.0\n" + extra
    )


def assist(d: LoomdProcess, text: str, *extra: str) -> dict:
    r = loomctl(d, "assist", text, "--json", *extra, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def wait_ready(d: LoomdProcess) -> None:
    """The assist sees the home once the home component offered its capabilities."""

    def acts() -> bool:
        r = loomctl(d, "caps", "--json")
        if r.returncode != 0 or "home.turn_on" not in r.stdout:
            return False
        return bool(assist(d, "turn off the bedside lamp")["actions"])

    wait_until(acts, 20, "the home's capabilities to reach the assist")


@pytest.fixture
def home_daemon(short_tmp: Path, broker: Mosquitto) -> Iterator[LoomdProcess]:  # noqa: F811  # noqa: F811
    """A daemon with the example home whose assist already sees the home's capabilities."""
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d", home_config(broker))
    (d.root / "home.d").mkdir()
    shutil.copy(EXAMPLE, d.root / "home.d" / "home.toml")
    try:
        d.start(timeout=30)
        wait_ready(d)
        yield d
    finally:
        d.close()
