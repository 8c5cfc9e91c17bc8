"""The maintainer scripts as `debian/rules` makes them, without a package build: every
package's prerm comes from the one template (packaging/debian/prerm.in), with the byte-code
helpers put in, valid shell; `clean` removes what the build made."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEBIAN = Path(__file__).resolve().parents[2] / "packaging" / "debian"
PACKAGES = ("loomd", "loomd-pylibs", "loomd-voice", "loomd-llm", "loomd-mcp")
MAKE = shutil.which("make", path="/usr/bin:/bin")

pytestmark = pytest.mark.skipif(
    MAKE is None or not Path("/usr/bin/python3").exists(), reason="needs make and python3"
)


def rules(tree: Path, target: str) -> None:
    r = subprocess.run(
        [str(MAKE), "-f", "debian/rules", target], cwd=tree, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_prerm_is_made_from_the_one_template(tmp_path: Path) -> None:
    shutil.copytree(DEBIAN, tmp_path / "debian")
    assert not list((tmp_path / "debian").glob("*.prerm")), "prerm scripts are made, not kept"
    rules(tmp_path, "execute_before_dh_installdeb")
    helpers = (DEBIAN / "pycompile.sh").read_text()
    made = {p: (tmp_path / "debian" / f"{p}.prerm").read_text() for p in PACKAGES}
    assert len(set(made.values())) == 1
    text = made["loomd"]
    assert "\n#PYCOMPILE#\n" not in text and helpers.strip() in text and "#DEBHELPER#" in text
    assert text.replace(helpers, "#PYCOMPILE#\n") == (DEBIAN / "prerm.in").read_text()
    for p in PACKAGES:
        r = subprocess.run(["sh", "-n", str(tmp_path / "debian" / f"{p}.prerm")], timeout=10)
        assert r.returncode == 0, p
        postinst = (tmp_path / "debian" / f"{p}.postinst").read_text()
        assert helpers.strip() in postinst  # the same step filled the postinst too
    rules(tmp_path, "override_dh_auto_clean")
    assert not list((tmp_path / "debian").glob("*.prerm"))
