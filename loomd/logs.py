"""Logging for the `loomd` logger tree: journald under systemd, readable lines otherwise.

Callers add structured fields with `log.info("msg", extra={"fields": {"topic": t}})`.
On stderr they become `key=value` after the message; in the journal they also
become upper-case journal fields (`TOPIC=...`), searchable with
`journalctl TOPIC=audio.frames`.

systemd sets $JOURNAL_STREAM to the `dev:inode` of the stream it connected to
stdout/stderr. Only if our stream *is* that one do we speak journald's
language; a redirected stderr (`loomd 2>file`) gets plain timestamped lines.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["LEVELS", "on_journal", "setup_logging"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

ROOT = "loomd"
_OURS = "_loomd_handler"  # marks handlers installed here, so a second call replaces them

# Fields the journal handler sets itself; a caller's field of the same name is renamed.
_RESERVED = frozenset(
    {
        "MESSAGE",
        "PRIORITY",
        "LOGGER",
        "THREAD_NAME",
        "PROCESS_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "CODE_ARGS",
        "SYSLOG_IDENTIFIER",
        "EXCEPTION_TEXT",
        "EXCEPTION_INFO",
    }
)


def setup_logging(
    level: str, *, stream: TextIO | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Configure the `loomd` logger; call again (e.g. on reload) to change the level."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    handler = _make_handler(stream, env)
    setattr(handler, _OURS, True)
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level.lower()])
    # Our handler is the one place loomd records go; a library that configures
    # the root logger must not print them a second time.
    logger.propagate = False


def on_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True if `stream` is the journal stream systemd gave us."""
    expected = env.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # StringIO, closed or detached streams
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _make_handler(stream: TextIO, env: Mapping[str, str]) -> logging.Handler:
    if not on_journal(stream, env):
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter())
        return handler
    journal = _journal_handler()
    if journal is not None:
        return journal
    # No systemd-python: journald still parses a leading <N> as the priority.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PriorityFormatter())
    return handler


def _journal_handler() -> logging.Handler | None:
    try:
        module = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler: logging.Handler = module.JournalHandler(SYSLOG_IDENTIFIER="loomd")
    handler.setFormatter(_MessageFormatter())
    handler.addFilter(_journal_fields)
    return handler


# --- formatting ---------------------------------------------------------------


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _quote(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    # Quote only when needed, so `key=value` stays greppable and unambiguous.
    if not text or re.search(r'[\s"=\\]', text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_fields(fields: Mapping[str, Any]) -> str:
    return "".join(f" {key}={_quote(value)}" for key, value in fields.items())


class _MessageFormatter(logging.Formatter):
    """`logger: message key=value`, plus the traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}{format_fields(_fields(record))}"
        extra = self._extra_lines(record)
        return f"{text}\n{extra}" if extra else text

    def _extra_lines(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class TextFormatter(_MessageFormatter):
    """`2026-11-21T10:00:00.123Z INFO loomd.bus: message key=value` (UTC)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {super().format(record)}"


def _priority(levelno: int) -> int:
    """syslog priority for a logging level (sd-daemon(3) prefixes)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class PriorityFormatter(_MessageFormatter):
    """`<6>loomd.bus: message key=value`: journald adds the time and parses the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        # journald makes one entry per line, so every line of a traceback needs the prefix.
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def journal_field_name(key: str) -> str:
    """A valid journal field name (A-Z, 0-9, _; not leading _ or digit; 64 chars max)."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _RESERVED:
        name = "F_" + name
    return name[:64]


def _journal_fields(record: logging.LogRecord) -> bool:
    # systemd.journal.JournalHandler sends every upper-case record attribute as a field.
    for key, value in _fields(record).items():
        setattr(record, journal_field_name(str(key)), _quote_free(value))
    return True


def _quote_free(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
