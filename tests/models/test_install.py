"""`loomctl models install DIR|TARBALL`: the offline path, with the real test models and the
shipped catalogue (the system test installs the test models exactly this way)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.models.conftest import DEFAULTS, held, loomctl_models

pytestmark = pytest.mark.models


def _states(mdir: Path, *extra: str) -> dict[str, str]:
    r = loomctl_models("list", "--verify", "--json", *extra, models_dir=mdir)
    return {m["id"]: m["verified"] for m in json.loads(r.stdout)["models"] if m["present"]}


def test_install_the_test_models_folder_with_the_shipped_catalogue(
    tmp_path: Path, models: Path
) -> None:
    mdir = tmp_path / "m"
    r = loomctl_models("install", str(models), models_dir=mdir, timeout=180)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((models / "models.json").read_text())
    shipped = [p for p in manifest if p != "llm/tiny-random.gguf"]
    for path in shipped:
        assert f"installed {path} (" in r.stdout
    assert "llm/tiny-random.gguf" in r.stdout.split("not in the catalogue")[1]  # reported
    assert "models.json" in r.stdout.split("not in the catalogue")[1]
    assert not (mdir / "llm/tiny-random.gguf").exists()
    assert DEFAULTS <= held(manifest)
    assert _states(mdir) == dict.fromkeys(held(manifest), "ok")
    again = loomctl_models("install", str(models), models_dir=mdir, timeout=180)
    assert again.returncode == 0 and "nothing new installed" in again.stdout


def test_install_matches_by_checksum_and_rejects_a_wrong_file_at_its_path(
    tmp_path: Path, models: Path
) -> None:
    stick = tmp_path / "stick"
    (stick / "misc").mkdir(parents=True)
    (stick / "openwakeword").mkdir()
    # a renamed file is found by its checksum
    shutil.copy(models / "openwakeword/hey_jarvis_v0.1.onnx", stick / "misc/jarvis-copy.onnx")
    # a file at its layout path whose bytes are not the catalogue's is refused
    wrong = bytearray((models / "openwakeword/alexa_v0.1.onnx").read_bytes())
    wrong[5000] ^= 0x55
    (stick / "openwakeword/alexa_v0.1.onnx").write_bytes(bytes(wrong))
    (stick / "notes.txt").write_text("not a model")
    mdir = tmp_path / "m"
    r = loomctl_models("install", str(stick), models_dir=mdir)
    assert r.returncode == 1
    assert "installed openwakeword/hey_jarvis_v0.1.onnx (openwakeword-hey_jarvis) " in r.stdout
    assert "from misc/jarvis-copy.onnx" in r.stdout
    assert "REJECTED openwakeword/alexa_v0.1.onnx: checksum mismatch" in r.stderr
    assert "notes.txt" in r.stdout
    assert not (mdir / "openwakeword/alexa_v0.1.onnx").exists()
    assert not list(mdir.rglob("*.partial"))
    assert (mdir / "openwakeword/hey_jarvis_v0.1.onnx").read_bytes() == (
        models / "openwakeword/hey_jarvis_v0.1.onnx"
    ).read_bytes()
    # hey_jarvis needs the features it does not have yet: the model is present, not complete
    assert _states(mdir) == {"openwakeword-hey_jarvis": "ok"}


def test_install_from_a_tarball_with_a_top_folder(tmp_path: Path, models: Path) -> None:
    tarball = tmp_path / "loomd-models.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("melspectrogram", "embedding_model", "hey_jarvis_v0.1"):
            src = models / "openwakeword" / f"{name}.onnx"
            tar.add(src, arcname=f"loomd-models/openwakeword/{name}.onnx")
        tar.add(models / "piper/en_US-joe-medium.onnx.json", arcname="loomd-models/voice.json")
    mdir = tmp_path / "m"
    r = loomctl_models("install", str(tarball), models_dir=mdir)
    assert r.returncode == 0, r.stderr
    assert "installed 4 file(s)" in r.stdout  # three by path, the voice config by checksum
    assert "piper-en_US-joe-medium: still incomplete" in r.stdout  # its .onnx is not there
    states = _states(mdir)
    assert states["openwakeword-features"] == "ok"
    assert states["openwakeword-hey_jarvis"] == "ok"
    v = loomctl_models("verify", models_dir=mdir)
    assert v.returncode == 1  # the half-installed voice is named
    assert "piper/en_US-joe-medium.onnx: missing" in v.stderr


def test_install_of_something_that_is_neither_a_folder_nor_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    r = loomctl_models("install", str(junk), models_dir=tmp_path / "m")
    assert r.returncode == 1
    assert r.stderr.startswith(f"loomctl: {junk}: not a readable tarball")
    r = loomctl_models("install", str(tmp_path / "nothing"), models_dir=tmp_path / "m")
    assert r.returncode == 1 and "no such folder or tarball" in r.stderr
