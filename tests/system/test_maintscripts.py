"""The maintainer scripts as `debian/rules` makes them, without a package build: every
package's prerm comes from the one template (packaging/debian/prerm.in), and every package
that adds a component has its postinst and postrm from the two extension templates, with
the byte-code helpers put in, valid shell; `clean` removes what the build made."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEBIAN = Path(__file__).resolve().parents[2] / "packaging" / "debian"
EXTENSIONS = ("loomd-voice", "loomd-llm", "loomd-mcp", "loomd-assist", "loomd-homeassistant")
PACKAGES = ("loomd", "loomd-pylibs", *EXTENSIONS)
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


def test_every_extension_has_its_postinst_and_postrm_from_the_two_templates(
    tmp_path: Path,
) -> None:
    shutil.copytree(DEBIAN, tmp_path / "debian")
    for p in EXTENSIONS:
        for kind in ("postinst", "postrm"):
            assert not (tmp_path / "debian" / f"{p}.{kind}").exists(), f"{p}.{kind} is made"
    rules(tmp_path, "execute_before_dh_installdeb")
    helpers = (DEBIAN / "pycompile.sh").read_text()
    for kind in ("postinst", "postrm"):
        made = {p: (tmp_path / "debian" / f"{p}.{kind}").read_text() for p in EXTENSIONS}
        assert len(set(made.values())) == 1, kind
        template = (DEBIAN / f"extension.{kind}.in").read_text()
        assert made["loomd-mcp"].replace(helpers, "#PYCOMPILE#\n") == template
        assert "try-restart loomd.service" in template and "#DEBHELPER#" in template
        for p in EXTENSIONS:
            r = subprocess.run(["sh", "-n", str(tmp_path / "debian" / f"{p}.{kind}")], timeout=10)
            assert r.returncode == 0, (p, kind)
    core = (tmp_path / "debian" / "loomd.postinst").read_text()
    assert core == (DEBIAN / "loomd.postinst").read_text().replace("#PYCOMPILE#\n", helpers)
    rules(tmp_path, "override_dh_auto_clean")
    for p in EXTENSIONS:
        for kind in ("postinst", "postrm"):
            assert not (tmp_path / "debian" / f"{p}.{kind}").exists()
    assert (tmp_path / "debian" / "loomd.postinst").exists()  # kept: it is the core's own
