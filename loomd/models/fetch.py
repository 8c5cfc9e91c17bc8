"""`loomctl models fetch`: get catalogue models from their sources into the models directory.

Per model: files already installed and verified are kept (nothing downloaded); the others are
got from the first source that works (an archive downloaded once serves every file it holds),
staged as `<path>.partial`, checked against the catalogue's checksum, and only when every file
of the model checks are they moved into place. A model whose file fails leaves nothing behind
but resumable downloads in `<models_dir>/.downloads/`.

Archives are not kept, unless a folder is given for them (`--keep-archives DIR`): then each is
kept there under its own name (a wheel stays a wheel, for another board or an offline
install), and one already there that matches the catalogue's sha256 is used, not downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import zipfile
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path, PurePosixPath

from loomd.models.catalogue import Model, ModelFile, Source
from loomd.models.convert import ConvertError, convert
from loomd.models.download import Policy, Progress, Transfer, download
from loomd.models.store import (
    PARTIAL,
    ChecksumMismatch,
    ModelsError,
    Store,
    check_file,
    hash_file,
)

log = logging.getLogger(__name__)


@dataclass
class FetchReport:
    installed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)

    @property
    def downloaded_bytes(self) -> int:
        return sum(t.bytes_received for t in self.transfers)


def _archive_name(url: str) -> str:
    base = PurePosixPath(url.split("?", 1)[0]).name or "download"
    return f"{hashlib.sha1(url.encode()).hexdigest()[:8]}-{base}"


def _direct_size(mf: ModelFile) -> int | None:
    """The size a direct download must have, when every accepted content has the same one."""
    sizes = mf.known_sizes()
    return next(iter(sizes)) if sizes and len(sizes) == 1 else None


def _join_split_files(work: Path) -> None:
    """Join every `NAME.part1`, `NAME.part2`, ... under `work` into `NAME`, in number order.
    A gap in the numbers (a part missing from the catalogue's archives) is an error naming it."""
    groups: dict[Path, dict[int, Path]] = {}
    for p in work.rglob("*.part*"):
        stem, _, number = p.name.rpartition(".part")
        if stem and number.isdigit():
            groups.setdefault(p.with_name(stem), {})[int(number)] = p
    for whole, parts in groups.items():
        missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
        if missing:
            raise ModelsError(
                f"{whole.name}: part {', '.join(map(str, missing))} of {max(parts)} is missing"
            )
        with open(whole, "wb") as out:
            for n in sorted(parts):
                with open(parts[n], "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                parts[n].unlink()


@dataclass(eq=False)
class Fetcher:
    store: Store
    progress: Progress
    policy: Policy = field(default_factory=Policy)
    _: KW_ONLY
    keep_archives: Path | None = None
    report: FetchReport = field(default_factory=FetchReport, init=False)
    _archives: dict[str, Path] = field(default_factory=dict, init=False)

    # --- planning ---------------------------------------------------------------------------

    def _missing(self, model: Model) -> list[ModelFile]:
        return [
            mf
            for mf in model.files
            if check_file(self.store.root, mf, verify=True).verified != "ok"
        ]

    def _partial_size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def bytes_needed(self, files: list[ModelFile]) -> int:
        """Disk the fetch may take at its peak: each archive once (less what a partial holds),
        each file, and for a conversion its unpacked input (about the size of the output)."""
        need = 0
        seen: set[str] = set()
        downloads = self.store.root / ".downloads"
        for mf in files:
            need += mf.expected_bytes
            src = mf.sources[0] if mf.sources else None
            if src is None:
                continue
            if src.is_archive:
                for a in src.archives:
                    if a.url in seen:
                        continue
                    seen.add(a.url)
                    name = _archive_name(a.url)
                    have = self._partial_size(downloads / name) or self._partial_size(
                        downloads / (name + PARTIAL)
                    )
                    need += max((a.archive_bytes or 0) - have, 0)
                if src.convert:
                    need += mf.expected_bytes
            else:
                need -= self._partial_size(self.store.root / (mf.path + PARTIAL))
        return max(need, 0)

    # --- doing ------------------------------------------------------------------------------

    def run(self, models: list[Model]) -> FetchReport:
        todo: list[tuple[Model, list[ModelFile]]] = []
        for m in models:
            missing = self._missing(m)
            if missing:
                todo.append((m, missing))
            else:
                self.report.already.append(m.id)
        if not todo:
            return self.report
        self.store.check_writable("fetch")
        with self.store.locked("fetch"):
            self.store.check_space(self.bytes_needed([f for _, fs in todo for f in fs]), "fetch")
            try:
                for m, files in todo:
                    self._fetch_model(m, files)
            finally:
                self._drop_archives()
        return self.report

    def _fetch_model(self, model: Model, files: list[ModelFile]) -> None:
        staged: list[tuple[ModelFile, Path]] = []
        try:
            for mf in files:
                staged.append((mf, self._get(mf)))
            self.store.commit(staged)
            self.report.installed.append(model.id)
        except ModelsError as exc:
            for _, p in staged:
                p.unlink(missing_ok=True)
            self.report.failed[model.id] = str(exc)
            log.debug("fetch of %s failed", model.id, exc_info=True)

    def _get(self, mf: ModelFile) -> Path:
        if not mf.sources:
            raise ModelsError(f"{mf.path}: the catalogue lists no source")
        errors = []
        for src in mf.sources:
            try:
                return self._from(src, mf)
            except ModelsError as exc:
                errors.append(str(exc))
                if len(mf.sources) > 1:
                    self.progress.note(f"{mf.path}: {exc}")
        if len(errors) == 1:
            raise ModelsError(errors[0])
        raise ModelsError(f"{mf.path}: no source worked: " + " | ".join(errors))

    def _from(self, src: Source, mf: ModelFile) -> Path:
        staged = self.store.staging(mf)
        if src.is_archive:
            archive = self._archive(src)
            if src.convert:
                self._convert(archive, src, staged)
            else:
                self._extract(archive, src, staged)
            what = f"{mf.path} ({src.member} in {src.url})"
            # A staged file from an earlier, interrupted extraction is rewritten above.
        else:
            if staged.exists():  # resume only what we know is a prefix of this URL's file
                marker = staged.with_name(staged.name + ".url")
                if not marker.exists() or marker.read_text() != src.url:
                    staged.unlink()
            self._mark(staged, src.url)
            try:
                t = download(
                    src.url,
                    staged,
                    expected_bytes=_direct_size(mf),
                    progress=self.progress,
                    policy=self.policy,
                    label=mf.path,
                )
            except ModelsError:
                if not staged.exists() or staged.stat().st_size == 0:  # nothing to resume
                    staged.unlink(missing_ok=True)
                    staged.with_name(staged.name + ".url").unlink(missing_ok=True)
                    self._prune(staged.parent)
                raise
            self.report.transfers.append(t)
            what = f"{mf.path} from {src.url}"
        try:
            self.store.check_staged(mf, staged, what)
        finally:
            staged.with_name(staged.name + ".url").unlink(missing_ok=True)
        return staged

    def _prune(self, folder: Path) -> None:
        """Drop a folder this fetch made for nothing (empty), up to the models dir."""
        while folder != self.store.root and self.store.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _mark(self, staged: Path, url: str) -> None:
        staged.with_name(staged.name + ".url").write_text(url)

    def _archive_path(self, src: Source) -> Path:
        if self.keep_archives is None:
            return self.store.downloads() / _archive_name(src.url)
        self.keep_archives.mkdir(parents=True, exist_ok=True)
        path = self.keep_archives / (PurePosixPath(src.url.split("?", 1)[0]).name or "download")
        if path.exists() and src.archive_sha256 and hash_file(path)["sha256"] != src.archive_sha256:
            self.progress.note(f"{path}: not the archive the catalogue names; fetching it again")
            path.unlink()
        return path

    def _archive(self, src: Source) -> Path:
        if src.url in self._archives:
            return self._archives[src.url]
        path = self._archive_path(src)
        if not path.exists():
            partial = path.with_name(path.name + PARTIAL)
            t = download(
                src.url,
                partial,
                expected_bytes=src.archive_bytes,
                progress=self.progress,
                policy=self.policy,
                label=PurePosixPath(src.url).name,
            )
            self.report.transfers.append(t)
            if src.archive_sha256:
                got = hash_file(partial)["sha256"]
                if got != src.archive_sha256:
                    partial.unlink()
                    raise ChecksumMismatch(src.url, f"sha256 {src.archive_sha256}", got)
            self.store.owner.apply(partial, 0o640)
            os.replace(partial, path)
        self._archives[src.url] = path
        return path

    def _open(self, archive: Path, url: str) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            archive.unlink(missing_ok=True)
            self._archives.pop(url, None)
            raise ModelsError(f"{url}: not a zip archive ({exc})") from None

    def _extract(self, archive: Path, src: Source, staged: Path) -> None:
        with self._open(archive, src.url) as z:
            try:
                member = z.open(src.member)
            except KeyError:
                raise ModelsError(f"{src.url} holds no {src.member}") from None
            with member, open(staged, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)

    def _convert(self, archive: Path, src: Source, staged: Path) -> None:
        work = archive.with_name(archive.name + ".d")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            self._unpack(archive, src, work)
            for part in src.parts:
                self._unpack(self._archive(part), part, work)
            if src.parts:
                _join_split_files(work)
            self.progress.note(f"converting {src.member} ({src.convert})")
            with open(staged, "wb") as out:
                summary = convert(work, out)
            self.progress.note(summary)
        except (ConvertError, OSError) as exc:
            staged.unlink(missing_ok=True)
            raise ModelsError(f"{src.url}: conversion failed: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _unpack(self, archive: Path, src: Source, work: Path) -> None:
        """The folder `src.member` of `archive`, into `work`."""
        with self._open(archive, src.url) as z:
            names = [n for n in z.namelist() if n.startswith(src.member) and n != src.member]
            if not names:
                raise ModelsError(f"{src.url} holds no folder {src.member}")
            for name in names:
                rel = PurePosixPath(name[len(src.member) :])
                if ".." in rel.parts or rel.is_absolute() or name.endswith("/"):
                    continue
                dest = work / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as member, open(dest, "wb") as out:
                    shutil.copyfileobj(member, out, 1 << 20)

    def _drop_archives(self) -> None:
        """Complete archives are not kept unless asked (they would double the disk used);
        partial ones are, so the next run resumes them."""
        for path in self._archives.values():
            if self.keep_archives is None:
                path.unlink(missing_ok=True)
        self._archives.clear()
        downloads = self.store.root / ".downloads"
        try:
            downloads.rmdir()  # only when empty
        except OSError:
            pass
