"""packaging/debian/split-venv on a small stand-in venv: each distribution to one
package by dependency closure, and the build stops on strays and overlaps.

Runs the script as debian/rules does, with Debian's /usr/bin/python3 (it needs
pip's vendored `packaging`), on dist-info folders written here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "debian" / "split-venv"
PY = Path("/usr/bin/python3")
SITE = "usr/lib/loomd/lib/python3.11/site-packages"
PACKAGES = (
    "loomd", "loomd-pylibs", "loomd-voice", "loomd-llm", "loomd-mcp", "loomd-assist",
    "loomd-homeassistant",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    subprocess.run([str(PY), "-c", "import pip._vendor.packaging"], check=False).returncode != 0
    if PY.exists()
    else True,
    reason="needs Debian's python3 with python3-pip",
)

LOOMD_REQUIRES = [
    "core-dep",
    "sysd; extra == 'systemd'",
    "whisper; extra == 'voice'",
    "numpy; extra == 'voice'",
    "llama; extra == 'llm'",
    "numpy; extra == 'llm'",
    "mcp; extra == 'mcp'",
    "hassil; extra == 'assist'",
    "jinja; extra == 'assist'",
    "jinja; extra == 'llm'",
    "esphome; extra == 'homeassistant'",
    "numpy; extra == 'homeassistant'",
]


def dist(site: Path, name: str, files: dict[str, bytes], requires: list[str] | None = None) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    meta = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    meta += [f"Requires-Dist: {r}" for r in requires or []]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    record = [f"{name}-1.0.dist-info/METADATA,,", f"{name}-1.0.dist-info/RECORD,,"]
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture()
def venv(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    site = stage / SITE
    lib = b"\x7fELF" + b"x" * 4096
    dist(site, "loomd", {"loomd/__init__.py": b""}, LOOMD_REQUIRES)
    dist(site, "core-dep", {"core_dep.py": b""})
    dist(site, "sysd", {"sysd/__init__.py": b""})
    dist(site, "whisper", {"whisper/__init__.py": b"", "libw.so": lib, "libw.so.1": lib}, ["idna"])
    dist(site, "llama", {"llama/__init__.py": b""}, ["helper"])
    dist(site, "helper", {"helper.py": b""})
    dist(site, "numpy", {"numpy/__init__.py": b""}, ["attrs"])
    # mcp shares idna with voice alone and attrs with both voice and llm (via numpy).
    dist(site, "mcp", {"mcp/__init__.py": b""}, ["pydantic", "idna", "attrs"])
    dist(site, "pydantic", {"pydantic/__init__.py": b"", "libp.so": lib}, ["idna"])
    dist(site, "idna", {"idna/__init__.py": b""})
    dist(site, "attrs", {"attrs/__init__.py": b""})
    # assist shares jinja with llm; the Home Assistant satellite (loomd-homeassistant
    # depends on loomd-voice and loomd-mcp) shares proto with voice, crypto with mcp and
    # aio with llm.
    dist(site, "hassil", {"hassil/__init__.py": b""}, ["yaml"])
    dist(site, "yaml", {"yaml/__init__.py": b""})
    dist(site, "jinja", {"jinja/__init__.py": b""})
    dist(site, "esphome", {"esphome/__init__.py": b""}, ["proto", "crypto", "aio", "zc"])
    dist(site, "zc", {"zc/__init__.py": b""})
    dist(site, "proto", {"proto/__init__.py": b""})
    dist(site, "crypto", {"crypto/__init__.py": b""})
    dist(site, "aio", {"aio/__init__.py": b""})
    for name, dep in (("whisper", "proto"), ("pydantic", "crypto"), ("llama", "aio")):
        with (site / f"{name}-1.0.dist-info" / "METADATA").open("a") as f:
            f.write(f"Requires-Dist: {dep}\n")
    (stage / "usr/lib/loomd/pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "debian").mkdir()
    return tmp_path


def split(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PY), str(SCRIPT), str(root / "stage"), str(root / "debian")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_each_distribution_lands_in_one_package(venv: Path) -> None:
    proc = split(venv)
    assert proc.returncode == 0, proc.stderr
    d = venv / "debian"
    want = {
        "loomd": [
            "loomd/__init__.py",
            "core_dep.py",
            "sysd/__init__.py",
            "idna/__init__.py",
            "attrs/__init__.py",
        ],
        "loomd-voice": ["whisper/__init__.py", "libw.so.1"],
        "loomd-llm": ["llama/__init__.py", "helper.py"],
        "loomd-pylibs": ["numpy/__init__.py"],
        "loomd-mcp": ["mcp/__init__.py", "pydantic/__init__.py", "libp.so"],
    }
    for pkg, files in want.items():
        for f in files:
            assert (d / pkg / SITE / f).is_file(), f"{f} not in {pkg}"
    assert (d / "loomd/usr/lib/loomd/pyvenv.cfg").is_file()  # the venv's skeleton: core
    assert (d / "loomd-pylibs.venv-dists").read_text() == "aio==1.0\nnumpy==1.0\n"
    assert (d / "loomd-mcp.venv-dists").read_text() == "crypto==1.0\nmcp==1.0\npydantic==1.0\n"
    core = (d / "loomd.venv-dists").read_text().split()
    assert "attrs==1.0" in core and "idna==1.0" in core
    # Identical copies of a library become one file and a relative symlink.
    link = d / "loomd-voice" / SITE / "libw.so"
    assert link.is_symlink() and link.resolve() == (d / "loomd-voice" / SITE / "libw.so.1")
    assert not any(p.is_file() for p in (venv / "stage").rglob("*"))


def test_what_mcp_shares_with_an_extra_goes_to_the_core(venv: Path) -> None:
    """loomd-mcp must never need loomd-pylibs (numpy): a library mcp shares with voice
    or llm is the core's, and each package lists only what no other one has."""
    proc = split(venv)
    assert proc.returncode == 0, proc.stderr
    d = venv / "debian"
    lists = {pkg: set((d / f"{pkg}.venv-dists").read_text().split()) for pkg in PACKAGES}
    every = [n for names in lists.values() for n in names]
    assert len(every) == len(set(every)), lists  # each distribution in one package
    assert not lists["loomd-mcp"] & {"idna==1.0", "attrs==1.0", "numpy==1.0"}
    assert lists["loomd-pylibs"] == {"numpy==1.0", "aio==1.0"}
    assert "split-venv: loomd-mcp: " in proc.stdout


def test_shared_libraries_go_to_the_package_all_their_users_depend_on(venv: Path) -> None:
    """Each extra's own libraries in its package; a shared one in the most specific
    package every user is or depends on (debian/control's Depends)."""
    proc = split(venv)
    assert proc.returncode == 0, proc.stderr
    d = venv / "debian"
    lists = {pkg: set((d / f"{pkg}.venv-dists").read_text().split()) for pkg in PACKAGES}
    assert lists["loomd-assist"] == {"hassil==1.0", "yaml==1.0"}
    assert "jinja==1.0" in lists["loomd"]  # assist and llm: only the core is below both
    assert lists["loomd-homeassistant"] == {"esphome==1.0", "zc==1.0"}
    assert "proto==1.0" in lists["loomd-voice"]  # homeassistant depends on loomd-voice
    assert "crypto==1.0" in lists["loomd-mcp"]  # ... and on loomd-mcp
    assert "aio==1.0" in lists["loomd-pylibs"]  # llm and homeassistant: via loomd-voice
    assert not lists["loomd-assist"] & lists["loomd-pylibs"]


def test_a_distribution_nobody_needs_stops_the_build(venv: Path) -> None:
    dist(venv / "stage" / SITE, "stray", {"stray.py": b""})
    proc = split(venv)
    assert proc.returncode == 1
    assert "needed by no package: stray" in proc.stderr


def test_a_file_claimed_by_two_distributions_stops_the_build(venv: Path) -> None:
    site = venv / "stage" / SITE
    with (site / "llama-1.0.dist-info" / "RECORD").open("a") as f:
        f.write("whisper/__init__.py,,\n")
    proc = split(venv)
    assert proc.returncode == 1
    assert "whisper/__init__.py is in" in proc.stderr


def test_an_unrecorded_file_in_site_packages_stops_the_build(venv: Path) -> None:
    (venv / "stage" / SITE / "orphan.py").write_text("")
    proc = split(venv)
    assert proc.returncode == 1
    assert "orphan.py belongs to no distribution" in proc.stderr
