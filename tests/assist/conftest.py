"""A daemon with the example home, a real mosquitto, the agents, home and assist components."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridges.conftest import (  # noqa: F401 - the fixture and the async test runner
    Mosquitto,
    broker,
    pytest_pyfunc_call,
)
from tests.conftest import LoomdProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "home" / "home.toml"


def home_config(broker: Mosquitto, extra: str = "") -> str:  # noqa: F811
    return (
        f"[mqtt]\nenabled = true\nport = {broker.port}\ndiscovery = false\n"
        "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        "[assist]\nenabled = true\nllm = false\nconfirm_timeout_s = 30.0\n" + extra
    )


@pytest.fixture
def home_daemon(short_tmp: Path, broker: Mosquitto) -> Iterator[LoomdProcess]:  # noqa: F811  # noqa: F811
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d", home_config(broker))
    (d.root / "home.d").mkdir()
    shutil.copy(EXAMPLE, d.root / "home.d" / "home.toml")
    try:
        d.start(timeout=30)
        yield d
    finally:
        d.close()
