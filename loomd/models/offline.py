"""`loomctl models install DIR|TARBALL`: models carried in on a USB stick, for boards offline.

A file is taken when it sits at its catalogue path (`whisper/ggml-tiny.en.bin`, also below a
top folder: `loomd-models/whisper/...`) or, wherever it is, when its checksum is one the
catalogue accepts. Each taken file is copied to `<path>.partial` while it is hashed, checked,
and moved into place; files the catalogue does not know are reported, not copied.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from loomd.models.catalogue import Model, ModelFile
from loomd.models.store import (
    DOWNLOADS,
    PARTIAL,
    ModelsError,
    Store,
    algos_of,
    check_file,
    match,
    new_hash,
)

_CHUNK = 1 << 20
_HINT_SLACK = 0.10  # a file whose size is unknown is looked at within 10 % of its size hint


@dataclass
class InstallReport:
    installed: dict[str, str] = field(default_factory=dict)  # catalogue path -> where from
    already: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # entry -> why


@dataclass(frozen=True)
class _Entry:
    name: str  # relative, '/'-separated
    size: int


class _Folder:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> Iterator[_Entry]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if fn.startswith(".") or fn.endswith(PARTIAL) or not p.is_file():
                    continue
                yield _Entry(p.relative_to(self.root).as_posix(), p.stat().st_size)

    @contextmanager
    def open(self, entry: _Entry) -> Iterator[IO[bytes]]:
        with open(self.root / entry.name, "rb") as f:
            yield f


class _Tarball:
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise ModelsError(f"{path}: not a readable tarball ({exc})") from None

    def entries(self) -> Iterator[_Entry]:
        for m in self.tar.getmembers():
            name = PurePosixPath(m.name)
            if m.isfile() and not any(p.startswith(".") for p in name.parts if p != "."):
                yield _Entry(str(name), m.size)

    @contextmanager
    def open(self, entry: _Entry) -> Iterator[IO[bytes]]:
        f = self.tar.extractfile(entry.name)
        if f is None:
            raise ModelsError(f"{entry.name}: cannot read it from the tarball")
        with f:
            yield f


def _layout_target(name: str, files: list[ModelFile]) -> ModelFile | None:
    for mf in files:
        if name == mf.path or name.endswith("/" + mf.path):
            return mf
    return None


def _plausible(size: int, files: list[ModelFile]) -> bool:
    """Worth hashing to look for a checksum match (a folder may hold gigabytes of other
    things: only files of a size the catalogue could accept are read)."""
    for mf in files:
        sizes = mf.known_sizes()
        if sizes is not None:
            if size in sizes:
                return True
        elif mf.size_hint and abs(size - mf.size_hint) <= _HINT_SLACK * mf.size_hint:
            return True
    return False


def install(source: Path, store: Store, models: list[Model]) -> InstallReport:
    if source.is_dir():
        reader: _Folder | _Tarball = _Folder(source)
    elif source.is_file():
        reader = _Tarball(source)
    else:
        raise ModelsError(f"{source}: no such folder or tarball")
    report = InstallReport()
    files = [mf for m in models for mf in m.files]
    done = {mf.path for mf in files if check_file(store.root, mf, verify=True).verified == "ok"}
    entries = list(reader.entries())
    wanted = [e for e in entries if (_layout_target(e.name, files) or _plausible(e.size, files))]
    for e in entries:
        if e not in wanted:
            report.unmatched.append(e.name)
    todo = [e for e in wanted if (t := _layout_target(e.name, files)) is None or t.path not in done]
    if not todo:
        report.already = sorted({t.path for e in wanted if (t := _layout_target(e.name, files))})
        return report
    store.check_writable("install")
    with store.locked("install"):
        store.check_space(sum(e.size for e in todo), "install")
        algos = algos_of(files)
        for e in wanted:
            target = _layout_target(e.name, files)
            if target is not None and target.path in done:
                if target.path not in report.already:
                    report.already.append(target.path)
                continue
            _take(reader, e, target, files, done, algos, store, report)
        try:
            (store.root / DOWNLOADS).rmdir()  # only when empty
        except OSError:
            pass
    return report


def _take(
    reader: _Folder | _Tarball,
    e: _Entry,
    target: ModelFile | None,
    files: list[ModelFile],
    done: set[str],
    algos: set[str],
    store: Store,
    report: InstallReport,
) -> None:
    """Copy one entry beside its destination while hashing it; keep it only if it checks."""
    staged = store.staging(target) if target else store.downloads() / ("incoming" + PARTIAL)
    hs = {a: new_hash(a) for a in algos}
    with reader.open(e) as src, open(staged, "wb") as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            for h in hs.values():
                h.update(chunk)
    digests = {a: h.hexdigest() for a, h in hs.items()}
    candidates = [target] if target else [mf for mf in files if mf.path not in done]
    found = next((mf for mf in candidates if match(mf, e.size, digests)), None)
    if found is None:
        staged.unlink(missing_ok=True)
        if target is None:
            report.unmatched.append(e.name)
        else:
            want = target.accepts[0]
            report.bad[e.name] = (
                f"checksum mismatch: expected {want.algo} {want.hexdigest}, "
                f"got {want.algo} {digests[want.algo]}"
            )
        return
    if target is None:  # matched by checksum: move the copy beside its real destination
        dest = store.staging(found)
        os.replace(staged, dest)
        staged = dest
    store.commit([(found, staged)])
    done.add(found.path)
    report.installed[found.path] = e.name
