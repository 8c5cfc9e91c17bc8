"""The models directory: what is installed, whether it verifies, and putting files there safely.

A file reaches its final path only by `os.replace` from a sibling `*.partial` whose checksum
was checked, so the daemon never sees a half-written model. Run as root (the packaged daemon's
`/var/lib/loomd/models`), new files and folders are given to the owner of the directory above
the models directory (the `loomd` account), 0640 and 0750, so the daemon can read them and
nobody else can change them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loomd.errors import LoomdError
from loomd.models.catalogue import Digest, Model, ModelFile

Verified = Literal["ok", "bad", "unchecked"]
DOWNLOADS = ".downloads"  # resumable transfers and unpacked archives, inside the models dir
PARTIAL = ".partial"
FILE_MODE, DIR_MODE = 0o640, 0o750
_CHUNK = 1 << 20


class ModelsError(LoomdError):
    code = "models"


class ChecksumMismatch(ModelsError):
    def __init__(self, what: str, expected: str, got: str) -> None:
        self.what, self.expected, self.got = what, expected, got
        super().__init__(f"{what}: checksum mismatch: expected {expected}, got {got}")


@dataclass(frozen=True)
class FileState:
    path: str
    present: bool
    verified: Verified
    problem: str = ""
    origin: str = ""  # which accepted content matched (when verified)


@dataclass(frozen=True)
class ModelState:
    """One catalogue model in one models directory."""

    id: str
    kind: str
    present: bool  # every file exists
    verified: Verified  # "bad" as soon as one file is; "ok" only when all were hashed
    problem: str = ""
    files: tuple[FileState, ...] = field(default=())


def new_hash(algo: str) -> Any:
    """A hashlib object for a catalogue digest kind. md5 and sha1 name a file (what upstream
    publishes, checked with its size), they secure nothing: `usedforsecurity=False` keeps
    them working where a FIPS build of OpenSSL refuses them otherwise."""
    return hashlib.new(algo, usedforsecurity=False)


def hash_file(path: Path, algos: Iterable[str] = ("sha256",)) -> dict[str, str]:
    hs = {a: new_hash(a) for a in set(algos)}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def match(mf: ModelFile, size: int, digests: dict[str, str]) -> Digest | None:
    """The accepted content these hashes (and size) are, if any."""
    for d in mf.accepts:
        if digests.get(d.algo) == d.hexdigest and (d.bytes is None or d.bytes == size):
            return d
    return None


def algos_of(files: Iterable[ModelFile]) -> set[str]:
    return {d.algo for mf in files for d in mf.accepts}


def _describe(mf: ModelFile) -> str:
    return " or ".join(f"{d.algo} {d.hexdigest}" for d in mf.accepts)


def check_file(models_dir: Path, mf: ModelFile, *, verify: bool) -> FileState:
    path = models_dir / mf.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileState(mf.path, False, "unchecked", "missing")
    except OSError as exc:
        return FileState(mf.path, False, "unchecked", f"cannot read: {exc.strerror}")
    sizes = mf.known_sizes()
    if sizes is not None and size not in sizes:
        want = " or ".join(str(s) for s in sorted(sizes))
        return FileState(mf.path, True, "bad", f"size {size} bytes, expected {want}")
    if not verify:
        return FileState(mf.path, True, "unchecked")
    try:
        digests = hash_file(path, algos_of([mf]))
    except OSError as exc:
        return FileState(mf.path, True, "bad", f"cannot read: {exc.strerror}")
    found = match(mf, size, digests)
    if found is None:
        got = ", ".join(f"{a} {h}" for a, h in sorted(digests.items()))
        return FileState(mf.path, True, "bad", f"checksum mismatch: got {got}")
    return FileState(mf.path, True, "ok", origin=found.origin)


def model_state(models_dir: Path, model: Model, *, verify: bool = False) -> ModelState:
    files = tuple(check_file(models_dir, mf, verify=verify) for mf in model.files)
    present = all(f.present for f in files)
    if any(f.verified == "bad" for f in files):
        verified: Verified = "bad"
    elif present and all(f.verified == "ok" for f in files):
        verified = "ok"
    else:
        verified = "unchecked"
    problems = [f"{f.path}: {f.problem}" for f in files if f.problem and f.problem != "missing"]
    missing = [f.path for f in files if not f.present]
    if missing and len(missing) < len(files):
        problems.insert(0, f"missing {', '.join(missing)}")
    return ModelState(model.id, model.kind, present, verified, "; ".join(problems), files)


def installed(
    models_dir: Path, *, verify: bool = False, models: list[Model] | None = None
) -> list[ModelState]:
    """The state of every catalogue model in `models_dir` (present or not): a fast size check,
    or with `verify` every checksum."""
    from loomd.models.catalogue import catalogue

    return [
        model_state(models_dir, m, verify=verify)
        for m in (catalogue() if models is None else models)
    ]


def check_readable(models_dir: Path) -> None:
    """One line when the folder exists but is closed to us (0750 loomd:loomd)."""
    try:
        exists = models_dir.exists()
    except PermissionError:
        exists = True
    if exists and not os.access(models_dir, os.R_OK | os.X_OK):
        raise ModelsError(
            f"cannot read {models_dir}: join the group loomd (`sudo adduser $USER loomd`, "
            "then log in again) or use sudo"
        )


# --- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who new files belong to; None: whoever runs us (not root, or nothing to hand over to)."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_dir(cls, models_dir: Path) -> Owner:
        if os.geteuid() != 0:
            return cls()
        for above in (models_dir, models_dir.parent):
            try:
                st = above.stat()
            except OSError:
                continue
            return cls(st.st_uid, st.st_gid)
        try:  # the state dir is not made yet (the unit makes it at first start)
            pw = pwd.getpwnam("loomd")
            return cls(pw.pw_uid, pw.pw_gid)
        except KeyError:
            return cls()

    def apply(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


class Store:
    """Writes into one models directory."""

    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir
        self.owner = Owner.for_dir(models_dir)

    def check_writable(self, command: str) -> None:
        """One line saying to use sudo, before anything is touched."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ModelsError(
                f"cannot write to {self.root} ({probe} is not writable by you); "
                f"run it as root: sudo loomctl models {command}"
            )

    def mkdir(self, path: Path) -> None:
        """`path` and its missing parents, owned and 0750 (the state dir too when the unit has
        not made it yet: systemd keeps its owner, it is already the daemon's)."""
        missing = []
        p = path
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            self.owner.apply(d, DIR_MODE)

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """One writer at a time: two fetches would write the same `.partial` files. The lock is
        on the directory itself, so nothing is left behind in it."""
        self.mkdir(self.root)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelsError(
                    f"another `loomctl models` is changing {self.root}; wait for it to finish "
                    f"(this was `{command}`)"
                ) from None
            yield
        finally:
            os.close(fd)

    def downloads(self) -> Path:
        d = self.root / DOWNLOADS
        self.mkdir(d)
        return d

    def staging(self, mf: ModelFile) -> Path:
        """Where a file is written before it is checked: beside its final path."""
        final = self.root / mf.path
        self.mkdir(final.parent)
        return final.with_name(final.name + PARTIAL)

    def check_staged(self, mf: ModelFile, staged: Path, what: str) -> Digest:
        """The staged file is one the catalogue accepts, or it is deleted and we raise."""
        size = staged.stat().st_size
        digests = hash_file(staged, algos_of([mf]))
        found = match(mf, size, digests)
        if found is None:
            staged.unlink(missing_ok=True)
            want = mf.accepts[0]
            raise ChecksumMismatch(what, f"{want.algo} {want.hexdigest}", digests[want.algo])
        return found

    def commit(self, staged: Iterable[tuple[ModelFile, Path]]) -> None:
        """Move checked files into place, owned and 0640; each move is atomic."""
        for mf, path in staged:
            self.owner.apply(path, FILE_MODE)
            os.replace(path, self.root / mf.path)

    def remove(self, model: Model) -> list[str]:
        gone = []
        for mf in model.files:
            path = self.root / mf.path
            for p in (path, path.with_name(path.name + PARTIAL)):
                if p.exists():
                    p.unlink()
                    if p == path:
                        gone.append(mf.path)
        return gone

    def free_bytes(self) -> int:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def check_space(self, needed: int, command: str) -> None:
        margin = max(64 << 20, needed // 20)  # filesystems misbehave when full; logs need room
        free = self.free_bytes()
        if free < needed + margin:
            raise ModelsError(
                f"not enough free disk for `loomctl models {command}` in {self.root}: needs "
                f"{mb(needed)} (+{mb(margin)} margin), {mb(free)} free; free some space or "
                f"pass --models-dir on a larger disk"
            )


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
