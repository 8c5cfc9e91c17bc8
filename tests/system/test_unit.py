"""Fast checks of systemd/loomd.service without a package build or root.

The same checks as scripts/check-package, against a stand-in root holding the
unit and an executable /usr/bin/loomd, so a unit edit fails in seconds:
`systemd-analyze verify` prints nothing and `security --offline` <= 2.0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "loomd.service"
# Drop-ins the extra packages ship (50-llm-jetson.conf only in the Jetson flavour).
DROPINS = sorted((UNIT.parent / "loomd.service.d").glob("*.conf"))
ANALYZE = shutil.which("systemd-analyze", path="/usr/bin:/bin")
HOST_UNITS = Path("/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    ANALYZE is None or not HOST_UNITS.is_dir(), reason="needs systemd-analyze (systemd)"
)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / "loomd.service")
    for target in HOST_UNITS.glob("*.target"):
        shutil.copy(target, units / target.name)
    for command in re.findall(r"^Exec\w*=[-@:+!]*(/\S+)", UNIT.read_text(), re.M):
        stub = tmp_path / command.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return tmp_path


@pytest.fixture()
def root_with_dropins(root: Path) -> Path:
    d = root / "lib/systemd/system/loomd.service.d"
    d.mkdir()
    for conf in DROPINS:
        if "jetson" not in conf.name:
            shutil.copy(conf, d / conf.name)
    return root


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_verify_prints_nothing(root: Path) -> None:
    proc = _analyze("verify", "--man=no", f"--root={root}", "loomd.service")
    assert (proc.stdout + proc.stderr).strip() == ""
    assert proc.returncode == 0


def test_security_exposure_at_most_2(root: Path) -> None:
    proc = _analyze("security", "--offline=yes", f"--root={root}", "loomd.service")
    match = re.search(r"Overall exposure level for loomd.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout


def test_unit_has_the_required_directives() -> None:
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "NotifyAccess=main",
        "User=loomd",
        "SupplementaryGroups=audio",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=~@privileged",
    ):
        assert directive in text, directive
    # libzmq aborts when ~@resources refuses it thread priorities.
    assert not re.search(r"^SystemCallFilter=.*@resources", text, re.M)


def _exposure(root: Path) -> float:
    proc = _analyze("security", "--offline=yes", f"--root={root}", "loomd.service")
    match = re.search(r"Overall exposure level for loomd.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


def test_dropins_verify_and_stay_at_most_2_5(root_with_dropins: Path) -> None:
    proc = _analyze("verify", "--man=no", f"--root={root_with_dropins}", "loomd.service")
    assert (proc.stdout + proc.stderr).strip() == ""
    assert _exposure(root_with_dropins) <= 2.5


def test_dropins_are_read(root_with_dropins: Path) -> None:
    """The voice drop-in's ProcSubset=all reaches the unit (the offline analysis reads
    lib/systemd/system/loomd.service.d/), so the score above includes it."""
    proc = _analyze("security", "--offline=yes", f"--root={root_with_dropins}", "loomd.service")
    line = next(x for x in proc.stdout.splitlines() if "ProcSubset=" in x)
    assert "✗" in line, line


def test_base_unit_denies_write_execute() -> None:
    text = UNIT.read_text()
    assert re.search(r"^MemoryDenyWriteExecute=yes$", text, re.M)
    for conf in DROPINS:
        if "jetson" not in conf.name:  # only CUDA's JIT needs W+X pages
            assert "MemoryDenyWriteExecute" not in conf.read_text(), conf.name
