"""The Debian packages on a real systemd: scripts/system-test under pytest.

Builds loomd, loomd-pylibs, loomd-voice, loomd-llm, loomd-mcp, loomd-assist and
loomd-homeassistant (lintian, systemd-analyze verify/security), makes a signed apt
repository, boots Debian bookworm in systemd-nspawn and runs the fifteen checks of
tests/system/checks.sh, the voice and ask checks on the small real test models
(tests/testmodels.py, passed through), the mcp check on tests/system/mcp_server.py, the
assist check (`loomctl assist "what time is it"` from the installed loomd-assist).
Timings in docs/packaging.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testmodels import ENV, MODELS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-test"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it boots a container with systemd-nspawn"
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool, path=SYSTEM_PATH) is None]
    if missing:
        return f"missing tools: apt-get install {' '.join(sorted(missing))}"
    return None


@pytest.mark.system
@pytest.mark.models
@pytest.mark.timeout(1200)
def test_system() -> None:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        [str(SCRIPT)],
        stdin=subprocess.DEVNULL,
        env={**os.environ, ENV: str(MODELS)},
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    print(proc.stdout)
    print(proc.stderr, file=sys.stderr)
    summary = [line for line in proc.stdout.splitlines() if "passed," in line]
    assert proc.returncode == 0, (
        f"system test failed: {summary[-1] if summary else proc.stdout[-2000:]}"
    )
