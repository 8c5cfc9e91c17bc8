"""Who may do what on the bus: rules read like mosquitto's ACL file.

A rule names identities (patterns over `Identity.names`: `group:loomd`, `uid:1000`,
`user:alice`, `curve:laptop`, `plugin:*`, `mcp:files`, `token:ha`) and what they may do:
topic patterns to `publish` and `subscribe`, capability patterns to `call` (glob, `home.*`),
`sensitive = true` to cover capabilities marked sensitive too, state namespaces (`state`,
glob) and control operations (`control`, glob: `agents.list`, `state.*`). Permissions of
every matching rule add up; nothing is denied by a rule, only not granted.

No rule at all: every identity may do what it could before (publish, subscribe, state,
control, call), except call capabilities marked `sensitive`. Once a rule exists, an
identity that no rule names may do nothing but the implicit minimum (answer a request on
its `thread.<id>.reply`, read its own reply topic, ask `caps.list`, `caps.invoke` and
`caps.grant`: the capability itself is checked by the action broker; hear `caps.gone.*`).
Root, the daemon's own user and its components are never limited.
"""

from __future__ import annotations

import contextvars
import fnmatch
import functools
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from loomd.bus.identity import Identity, IdentityKind
from loomd.bus.topics import MAX_SEGMENTS, TopicTrie, canonical, validate_pattern
from loomd.config import Problem, Section, build_section, option
from loomd.errors import ConfigError, LoomdError, ProtocolError

__all__ = [
    "CALLER",
    "EVERYTHING",
    "UNKNOWN_CALLER",
    "Acl",
    "AclRule",
    "Caller",
    "Forbidden",
    "Grants",
    "Manifest",
    "covers",
    "current_caller",
    "read_acl_dir",
]

IMPLICIT_PUBLISH = ("thread.*.reply", "caps.invoke", "caps.list", "caps.grant")
_REPLY = re.compile(r"thread\.[^.*#]+\.reply")
# which providers the broker dropped: a holder of one-hop grants ends its calls to them
_GONE = re.compile(r"caps\.gone\.(\*|[^.*#]+)")
CACHE = 4096


class Forbidden(LoomdError):
    """The caller's identity may not do this (no rule grants it)."""

    code = "forbidden"


def _check_topic_patterns(value: tuple[str, ...]) -> Problem | None:
    for i, pattern in enumerate(value):
        try:
            validate_pattern(pattern)
        except ProtocolError as exc:
            return (f"[{i}]", pattern, f"a topic pattern ({exc.detail or exc.reason})")
    return None


def _check_globs(value: tuple[str, ...]) -> Problem | None:
    for i, glob in enumerate(value):
        if not glob or any(c.isspace() for c in glob):
            return (f"[{i}]", glob, "a non-empty pattern without spaces")
    return None


_IDENTITY_KINDS = (
    "uid", "gid", "user", "group", "curve", "plugin", "mcp", "token", "voice", "daemon",
)  # fmt: skip


def _check_identities(value: tuple[str, ...]) -> Problem | None:
    if not value:
        return ("", [], "at least one identity pattern")
    for i, pat in enumerate(value):
        kind, colon, _ = pat.partition(":")
        if pat != "*" and not (colon and kind in _IDENTITY_KINDS):
            return (
                f"[{i}]",
                pat,
                'a pattern "kind:name" (' + ", ".join(_IDENTITY_KINDS) + ") or *",
            )
    return None


@dataclass(frozen=True)
class AclRule(Section):
    """One `[[acl]]` table (or one table of an `acl.d/*.toml` file)."""

    SECTION: ClassVar[str] = ""

    identity: tuple[str, ...] = option(
        factory=tuple, check=_check_identities, expected="a list of identity patterns"
    )
    publish: tuple[str, ...] = option(
        factory=tuple, check=_check_topic_patterns, expected="a list of topic patterns"
    )
    subscribe: tuple[str, ...] = option(
        factory=tuple, check=_check_topic_patterns, expected="a list of topic patterns"
    )
    call: tuple[str, ...] = option(
        factory=tuple, check=_check_globs, expected="a list of capability patterns"
    )
    sensitive: bool = option(False)
    state: tuple[str, ...] = option(
        factory=tuple, check=_check_globs, expected="a list of namespace patterns"
    )
    control: tuple[str, ...] = option(
        factory=tuple, check=_check_globs, expected="a list of control operation patterns"
    )

    def applies(self, identity: Identity) -> bool:
        return any(_glob(p, n) for p in self.identity for n in (*identity.names, "*"))


@dataclass(frozen=True)
class Manifest:
    """What an in-process plugin declares (`Agent.topics`, `publishes`, `calls`, `state`):
    with rules in force it gets this, plus what rules naming `plugin:<id>` grant."""

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    state: tuple[str, ...] = ()


def _glob(pattern: str, name: str) -> bool:
    return pattern == name or pattern == "*" or fnmatch.fnmatchcase(name, pattern)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic `requested` (a subscription pattern) can match is matched by
    `allowed`: `#` covers anything, `*` one segment (a name or `*`), a name itself."""
    a, r = allowed.split("."), requested.split(".")

    @functools.cache
    def go(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(r)
        if a[i] == "#":
            return go(i + 1, j) or (j < len(r) and go(i, j + 1))
        if j == len(r) or r[j] == "#":
            return False
        if a[i] == "*":
            return go(i + 1, j + 1)
        return a[i] == r[j] and go(i + 1, j + 1)

    if len(a) > MAX_SEGMENTS or len(r) > MAX_SEGMENTS:
        return False
    return go(0, 0)


class _Topics:
    """Topic patterns with a cached verdict per topic (publish) or pattern (subscribe)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(dict.fromkeys(patterns))
        self.trie: TopicTrie[int] = TopicTrie(CACHE)
        for p in self.patterns:
            self.trie.add(p, 0)
        self._subs: dict[str, bool] = {}

    def publish(self, topic: str) -> bool:
        return bool(self.trie.match(topic))

    def subscribe(self, pattern: str) -> bool:
        hit = self._subs.get(pattern)
        if hit is None:
            form = canonical(pattern)  # `#.*` asks for what `*.#` does
            hit = any(covers(p, form) for p in self.patterns)
            if len(self._subs) >= CACHE:
                self._subs.clear()
            self._subs[pattern] = hit
        return hit


class Grants:
    """What one identity may do: the sum of the rules that name it."""

    def __init__(
        self,
        *,
        everything: bool = False,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        call: Iterable[str] = (),
        sensitive: bool = False,
        state: Iterable[str] = (),
        control: Iterable[str] = (),
        implicit: bool = True,
    ) -> None:
        self.everything = everything
        self.verdicts: dict[str, bool] = {}  # publish topic -> may it (a cache)
        self._pub = _Topics([*publish, *(IMPLICIT_PUBLISH if implicit else ())])
        self._sub = _Topics(subscribe)
        self.call = tuple(dict.fromkeys(call))
        self.sensitive = sensitive
        self.state = tuple(dict.fromkeys(state))
        self.control = tuple(dict.fromkeys(control))

    def may_publish(self, topic: str) -> bool:
        """The verdict, remembered per topic in `verdicts` (the server's hot path reads
        that dict first: one lookup per publish)."""
        ok = self.everything or self._pub.publish(topic)
        if len(self.verdicts) >= CACHE:
            self.verdicts.clear()
        self.verdicts[topic] = ok
        return ok

    def may_subscribe(self, pattern: str) -> bool:
        # its own reply topic (the id is random and only the requester knows it)
        return (
            self.everything
            or self._sub.subscribe(pattern)
            or bool(_REPLY.fullmatch(pattern) or _GONE.fullmatch(pattern))
        )

    def may_call(self, name: str, *, sensitive: bool = False) -> bool:
        if self.everything:
            return True
        if sensitive and not self.sensitive:
            return False
        return any(_glob(p, name) for p in self.call)

    def may_state(self, namespace: str) -> bool:
        return self.everything or any(_glob(p, namespace) for p in self.state)

    def may_control(self, op: str) -> bool:
        return self.everything or any(_glob(p, op) for p in self.control)

    def describe(self) -> dict[str, Any]:
        if self.everything:
            return {"everything": True}
        return {
            "publish": list(self._pub.patterns),
            "subscribe": list(self._sub.patterns),
            "call": list(self.call),
            "sensitive": self.sensitive,
            "state": list(self.state),
            "control": list(self.control),
        }


EVERYTHING = Grants(everything=True)
# No rule configured: as before the ACL existed, but sensitive capabilities stay closed.
AS_BEFORE = Grants(publish=("#",), subscribe=("#",), call=("*",), state=("*",), control=("*",))


@dataclass(frozen=True)
class Caller:
    """An identity with its grants: what travels with an event (in process) and a control
    operation, so the part that acts (the action broker, a command) can check it."""

    identity: Identity
    grants: Grants

    @property
    def label(self) -> str:
        return self.identity.label

    def may_call(
        self, name: str, *, sensitive: bool = False, allowed_callers: Sequence[str] = ()
    ) -> bool:
        """A capability call: the capability's own `allowed_callers` (if any), then the
        rules (`sensitive` ones need a rule that says `sensitive = true`)."""
        if self.identity.superuser:
            return True
        if allowed_callers and not any(
            _glob(p, n) for p in allowed_callers for n in self.identity.names
        ):
            return False
        return self.grants.may_call(name, sensitive=sensitive)


# An event that carries no caller came back from the journal (a replay after a detach):
# nothing vouches for who published it, so it may do nothing that needs a right.
UNKNOWN_CALLER = Caller(Identity(IdentityKind.ANONYMOUS, "replayed"), Grants())


class Acl:
    """The rules in force; `caller(identity)` gives each identity its grants (cached)."""

    def __init__(self, rules: Sequence[AclRule] = (), source: str = "") -> None:
        self.rules = tuple(rules)
        self.source = source
        self._cache: dict[tuple[Identity, Manifest | None], Caller] = {}

    @property
    def configured(self) -> bool:
        return bool(self.rules)

    def caller(self, identity: Identity, manifest: Manifest | None = None) -> Caller:
        key = (identity, manifest)
        hit = self._cache.get(key)
        if hit is None:
            hit = Caller(identity, self._grants(identity, manifest))
            if len(self._cache) >= CACHE:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _grants(self, identity: Identity, manifest: Manifest | None) -> Grants:
        if identity.superuser:
            return EVERYTHING
        if not self.rules:
            return AS_BEFORE
        mine = [r for r in self.rules if r.applies(identity)]
        m = manifest or Manifest()
        return Grants(
            publish=[*m.publish, *(p for r in mine for p in r.publish)],
            subscribe=[*m.subscribe, *(p for r in mine for p in r.subscribe)],
            call=[*m.call, *(p for r in mine for p in r.call)],
            sensitive=any(r.sensitive for r in mine),
            state=[*m.state, *(p for r in mine for p in r.state)],
            control=[p for r in mine for p in r.control],
        )


def read_acl_dir(folder: Path) -> tuple[AclRule, ...]:
    """Every `*.toml` file of an `acl.d/` folder, in name order: each holds `[[acl]]`
    tables like the main config. A bad file is a ConfigError naming it (nothing of the
    folder applies then: a half-read ACL is not the one the operator wrote)."""
    if not folder.is_dir():
        return ()
    rules: list[AclRule] = []
    for path in sorted(folder.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                "<file>", str(exc), "a readable TOML file", source=str(path)
            ) from None
        unknown = [k for k in data if k != "acl"]
        if unknown or not isinstance(data.get("acl", []), list):
            raise ConfigError(
                unknown[0] if unknown else "acl", "...", "only [[acl]] tables", source=str(path)
            )
        for i, table in enumerate(data.get("acl", [])):
            try:
                if not isinstance(table, dict):
                    raise ConfigError(f"acl[{i}]", table, "a table")
                rules.append(build_section(AclRule, table, f"acl[{i}]"))
            except ConfigError as exc:
                raise ConfigError(exc.key, exc.value, exc.expected, source=str(path)) from None
    return tuple(rules)


# The caller a control operation runs for: the bus server sets it around each one (a task of
# its own); commands that act for their caller (`agents.call`, `status`) read it.
CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("loomd_caller", default=None)


def current_caller() -> Caller | None:
    return CALLER.get()
