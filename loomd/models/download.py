"""One HTTP download into a `.partial` file that survives interruptions.

An existing `.partial` is resumed with `Range: bytes=N-` (a server that answers 200 instead of
206 sends the whole file again, so the partial is restarted). Transient failures (timeouts,
cut connections, 5xx) are retried with a short backoff, each retry resuming where the bytes
stopped; a 4xx is final (the caller tries the next source). Progress goes to stderr: a bar on
a terminal, a few plain lines otherwise (journald, CI logs).
"""

from __future__ import annotations

import http.client
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from loomd import __version__
from loomd.models.store import ModelsError, mb

_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(ModelsError):
    def __init__(self, url: str, reason: str, *, final: bool = False) -> None:
        self.url, self.reason, self.final = url, reason, final
        super().__init__(f"{url}: {reason}")


@dataclass
class Transfer:
    """What one download did: for the summary, and for tests that check resuming."""

    url: str
    path: Path
    bytes_received: int = 0
    resumed_from: int = 0
    attempts: int = 0
    seconds: float = 0.0


class Progress:
    """A progress bar on a terminal, plain lines otherwise; both on stderr."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = stream or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self._label = ""
        self._total = 0
        self._start = 0.0
        self._last = 0.0
        self._quarter = 0
        self._base = 0

    def begin(self, label: str, done: int, total: int | None) -> None:
        self._label, self._total = label, total or 0
        self._start = time.monotonic()
        self._last = self._start - 1.0  # draw the first update at once
        self._base = done
        self._quarter = 0
        if not self.tty:
            size = f" ({mb(total)})" if total else ""
            resume = f", resuming at {mb(done)}" if done else ""
            print(f"downloading {label}{size}{resume}", file=self.out, flush=True)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self._last < 0.1:
                return
            self._last = now
            rate = (done - self._base) / max(now - self._start, 1e-6)
            if self._total:
                frac = min(done / self._total, 1.0)
                bar = "#" * int(frac * 24)
                eta = (self._total - done) / rate if rate > 0 else 0.0
                line = (
                    f"\r{self._label[:32]:32} {frac:4.0%} [{bar:24}] {mb(done)}/{mb(self._total)}"
                    f" {rate / 1e6:5.1f} MB/s {eta:4.0f}s"
                )
            else:
                line = f"\r{self._label[:32]:32} {mb(done)} {rate / 1e6:5.1f} MB/s"
            print(line, end="", file=self.out, flush=True)
        elif self._total:
            quarter = int(4 * done / self._total)
            if quarter > self._quarter and quarter < 4:
                self._quarter = quarter
                print(f"  {quarter * 25}% of {self._label}", file=self.out, flush=True)

    def end(self, done: int, ok: bool = True) -> None:
        secs = time.monotonic() - self._start
        rate = (done - self._base) / max(secs, 1e-6) / 1e6
        if self.tty:
            self._last = 0.0
            self.update(done)  # the final state, then keep the bar on its own line
            print(file=self.out, flush=True)
        if ok:
            print(
                f"  got {self._label}: {mb(done)} in {secs:.1f} s ({rate:.1f} MB/s)",
                file=self.out,
                flush=True,
            )

    def note(self, text: str) -> None:
        if self.tty:
            print(file=self.out)
        print(f"  {text}", file=self.out, flush=True)


@dataclass(frozen=True)
class Policy:
    timeout_s: float = 30.0
    retries: int = 3  # further attempts after a failure that made no progress
    backoff_s: float = 1.0


def download(
    url: str,
    partial: Path,
    *,
    expected_bytes: int | None,
    progress: Progress,
    policy: Policy = Policy(),
    label: str = "",
) -> Transfer:
    """Bring `partial` to the complete content of `url` (resuming what is there)."""
    t = Transfer(url, partial)
    started = time.monotonic()
    failures = 0
    label = label or url.rsplit("/", 1)[-1]
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if expected_bytes is not None and have > expected_bytes:
            partial.unlink()  # not a prefix of what we want
            have = 0
        if expected_bytes is not None and have == expected_bytes:
            break  # complete already (an earlier run was interrupted after the last byte)
        t.attempts += 1
        if t.attempts == 1:
            t.resumed_from = have
        try:
            got = _attempt(url, partial, have, expected_bytes, progress, policy, label)
        except DownloadError as exc:
            if exc.final:
                raise
            failures += 1
            if failures > policy.retries:
                raise DownloadError(
                    url, f"{exc.reason} (gave up after {t.attempts} attempts)"
                ) from None
            progress.note(f"{exc.reason}; retrying in {policy.backoff_s * failures:g} s")
            time.sleep(policy.backoff_s * failures)
            continue
        finally:
            now = partial.stat().st_size if partial.exists() else 0
            if now > have:
                failures = 0  # progress was made: a flaky link may still finish
                t.bytes_received += now - have
        if got:
            break
    t.seconds = time.monotonic() - started
    return t


def _attempt(
    url: str,
    partial: Path,
    have: int,
    expected: int | None,
    progress: Progress,
    policy: Policy,
    label: str,
) -> bool:
    """One request. True when the file is complete."""
    req = urllib.request.Request(url, headers={"User-Agent": f"loomd/{__version__}"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=policy.timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after `have`: the server's file is shorter
            partial.unlink()
            raise DownloadError(url, "the server rejected the resume range; restarting") from None
        final = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise DownloadError(url, f"HTTP {exc.code} {exc.reason}", final=final) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(url, f"cannot connect: {reason}") from None
    with resp:
        start = 0
        total: int | None = None
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(url, f"bad Content-Range {resp.headers.get('Content-Range')}")
            start = have
            total = None if m.group(3) == "*" else int(m.group(3))
        else:  # 200: the whole body (no range support, or nothing to resume)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if expected is not None and total is not None and total != expected:
            raise DownloadError(
                url, f"the server has {total} bytes, the catalogue says {expected}", final=True
            )
        total = total or expected
        progress.begin(label, start, total)
        done = start
        with open(partial, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            try:
                while chunk := resp.read1(_CHUNK):  # what has arrived: a kill loses little
                    f.write(chunk)
                    done += len(chunk)
                    progress.update(done)
            except (OSError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
                progress.end(done, ok=False)
                raise DownloadError(url, f"transfer cut at {mb(done)}: {exc!r}") from None
        if total is not None and done < total:
            progress.end(done, ok=False)
            raise DownloadError(url, f"transfer cut at {mb(done)} of {mb(total)}")
        progress.end(done)
    return True
