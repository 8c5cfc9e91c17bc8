from __future__ import annotations

import calendar
import io
import logging
import os
import re
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from loomd.logs import journal_field_name, on_journal, setup_logging

LINE = re.compile(r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{3}Z (?P<level>[A-Z]+) (?P<rest>.*)")


@pytest.fixture(autouse=True)
def restore_loomd_logger() -> Iterator[None]:
    logger = logging.getLogger("loomd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    root_handlers = list(logging.getLogger().handlers)
    yield
    assert logging.getLogger().handlers == root_handlers, "the root logger is not ours"
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def no_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd.journal", None)  # makes the import fail


def journal_env(fd: int) -> dict[str, str]:
    st = os.fstat(fd)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_stderr_lines_have_utc_time_level_logger_and_fields() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, env={})
    log = logging.getLogger("loomd.bus")
    log.info("bound %s", "ipc", extra={"fields": {"path": "/run/x", "note": "two words", "n": 3}})
    log.debug("hidden")
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    match = LINE.fullmatch(line.rstrip("\n"))
    assert match is not None, line
    assert match["level"] == "INFO"
    assert match["rest"] == 'loomd.bus: bound ipc path=/run/x note="two words" n=3'
    stamp = calendar.timegm(time.strptime(match["ts"], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamp - time.time()) < 60  # the Z is honest: UTC, not local time


def test_level_and_reconfiguration() -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out, env={})
    log = logging.getLogger("loomd.state")
    log.info("quiet")
    setup_logging("debug", stream=out, env={})  # a reload replaces, never stacks, handlers
    log.debug("loud")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("DEBUG loomd.state: loud")
    with pytest.raises(ValueError, match="expected one of debug, info, warning, error"):
        setup_logging("verbose", stream=out, env={})


def test_tracebacks_follow_the_line() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, env={})
    try:
        raise KeyError("boom")
    except KeyError:
        logging.getLogger("loomd.x").exception("failed")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("ERROR loomd.x: failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'boom'"


def test_journal_stream_without_systemd_python_uses_priority_prefixes(
    tmp_path: Path, no_systemd_python: None
) -> None:
    with (tmp_path / "stderr").open("w+") as stream:
        env = journal_env(stream.fileno())
        assert on_journal(stream, env)
        setup_logging("debug", stream=stream, env=env)
        log = logging.getLogger("loomd.bus")
        log.debug("d")
        log.info("hello", extra={"fields": {"topic": "audio.frames"}})
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise ValueError("x")
        except ValueError:
            log.exception("oops")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[:5] == [
        "<7>loomd.bus: d",
        "<6>loomd.bus: hello topic=audio.frames",
        "<4>loomd.bus: w",
        "<3>loomd.bus: e",
        "<2>loomd.bus: c",
    ]
    # journald makes one entry per line: each traceback line keeps the priority.
    assert lines[5] == "<3>loomd.bus: oops"
    assert len(lines) > 6 and all(line.startswith("<3>") for line in lines[5:])


def test_journal_stream_on_a_pipe(no_systemd_python: None) -> None:
    r, w = os.pipe()
    with os.fdopen(r, "r") as reader, os.fdopen(w, "w") as writer:
        setup_logging("info", stream=writer, env=journal_env(w))
        logging.getLogger("loomd").info("via pipe")
        writer.flush()
        assert reader.readline() == "<6>loomd: via pipe\n"


def test_a_foreign_journal_stream_means_plain_lines(tmp_path: Path) -> None:
    # Under systemd but with stderr redirected elsewhere: the inode differs.
    with (tmp_path / "a").open("w+") as mine, (tmp_path / "b").open("w") as other:
        setup_logging("info", stream=mine, env=journal_env(other.fileno()))
        logging.getLogger("loomd").info("plain")
        mine.seek(0)
        assert LINE.fullmatch(mine.read().rstrip("\n"))
    assert not on_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


class FakeJournalHandler(logging.Handler):
    """Behaves like systemd.journal.JournalHandler: record attributes become fields."""

    sent: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, level: int = logging.NOTSET, **extra: Any) -> None:
        super().__init__(level)
        self._extra = extra

    def emit(self, record: logging.LogRecord) -> None:
        fields = {**self._extra, **record.__dict__}
        self.sent.append({"MESSAGE": self.format(record), **fields})


def test_journal_handler_gets_upper_case_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("systemd.journal")
    fake.JournalHandler = FakeJournalHandler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "systemd.journal", fake)
    monkeypatch.setattr(FakeJournalHandler, "sent", [])
    with (tmp_path / "stderr").open("w") as stream:
        setup_logging("info", stream=stream, env=journal_env(stream.fileno()))
        fields = {"topic": "audio.frames", "sub-id": 7, "message": "clash"}
        logging.getLogger("loomd.bus").info("dropped", extra={"fields": fields})
    [entry] = FakeJournalHandler.sent
    assert entry["SYSLOG_IDENTIFIER"] == "loomd"
    assert entry["MESSAGE"] == "loomd.bus: dropped topic=audio.frames sub-id=7 message=clash"
    assert entry["TOPIC"] == "audio.frames"
    assert entry["SUB_ID"] == "7"
    assert entry["F_MESSAGE"] == "clash"  # never overrides the journal's own MESSAGE


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("topic", "TOPIC"),
        ("queue.depth", "QUEUE_DEPTH"),
        ("_trusted", "TRUSTED"),
        ("1st", "F_1ST"),
        ("priority", "F_PRIORITY"),
        ("x" * 80, "X" * 64),
    ],
)
def test_journal_field_names(key: str, name: str) -> None:
    assert journal_field_name(key) == name
