"""The floors hold: `scripts/check-layers` passes on this checkout, and it does fail on an
import from a higher floor and on an import cycle (run against small trees made here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_an_import_from_a_higher_floor_fails(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "loomd/errors.py": "def f():\n    from loomd.ctl import main  # lazy still counts\n",
        "loomd/ctl.py": "from loomd.errors import f\nmain = f\n",
    })  # fmt: skip
    r = run("--root", str(root))
    assert r.returncode == 1
    assert "loomd/errors.py:2: loomd.errors (base) imports loomd.ctl (ctl), a higher floor" in (
        r.stdout
    )


def test_a_cycle_fails_even_on_one_floor(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "loomd/agents/__init__.py": "",
        "loomd/agents/a.py": "from loomd.agents import b\n",
        "loomd/agents/b.py": "import loomd.agents.a\n",
    })  # fmt: skip
    r = run("--root", str(root))
    assert r.returncode == 1
    assert "import cycle of 2 modules: loomd.agents.a -> loomd.agents.b" in r.stdout


def test_type_only_imports_and_unplaced_modules(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "loomd/errors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from loomd.ctl import main\n",
        "loomd/ctl.py": "import loomd.errors\n",
        "loomd/newthing.py": "",
    })  # fmt: skip
    r = run("--root", str(root))
    assert r.returncode == 1
    assert "loomd.newthing is on no floor" in r.stdout
    assert "higher floor" not in r.stdout and "cycle" not in r.stdout
