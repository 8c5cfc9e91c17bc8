"""The floors hold: `scripts/check-layers` passes on this checkout, and it does fail on an
import from a higher floor and on an import cycle (run against small trees made here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check-layers"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"loomd/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_this_checkout_has_no_import_up_and_no_cycle() -> None:
    r = run()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no import up, no cycle" in r.stdout


FAILING = {
    "an import from a higher floor": (
        {
            "loomd/errors.py": "def f():\n    from loomd.ctl import main  # lazy still counts\n",
            "loomd/ctl.py": "from loomd.errors import f\nmain = f\n",
        },
        ["loomd/errors.py:2: loomd.errors (base) imports loomd.ctl (ctl), a higher floor"],
        [],
    ),
    "a cycle even on one floor": (
        {
            "loomd/agents/__init__.py": "",
            "loomd/agents/a.py": "from loomd.agents import b\n",
            "loomd/agents/b.py": "import loomd.agents.a\n",
        },
        ["import cycle of 2 modules: loomd.agents.a -> loomd.agents.b"],
        [],
    ),
    "type-only imports pass, an unplaced module fails": (
        {
            "loomd/errors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from loomd.ctl import main\n",
            "loomd/ctl.py": "import loomd.errors\n",
            "loomd/newthing.py": "",
        },
        ["loomd.newthing is on no floor"],
        ["higher floor", "cycle"],
    ),
}


@pytest.mark.parametrize(("files", "said", "unsaid"), FAILING.values(), ids=FAILING.keys())
def test_a_bad_tree_fails_and_says_why(
    tmp_path: Path, files: dict[str, str], said: list[str], unsaid: list[str]
) -> None:
    r = run("--root", str(tree(tmp_path, files)))
    assert r.returncode == 1
    for text in said:
        assert text in r.stdout
    for text in unsaid:
        assert text not in r.stdout
