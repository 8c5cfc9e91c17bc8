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
