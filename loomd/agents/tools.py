"""Capabilities as tools: broker capability specs become `ToolSpec`s whose names a model
(OpenAI, llama.cpp grammar) or an MCP host accepts, and back.

A tool name is `[A-Za-z0-9_-]{1,64}` and unique in its set. The rules, deterministic for a
given set of capabilities whatever the order they arrive in:
- every character outside that set becomes `_` (`lights.set` -> `lights_set`,
  `mcp:time:get_current_time` -> `mcp_time_get_current_time`);
- the highest version of a name gets the plain name (the version the broker resolves an
  unversioned call to); each older version gets `_v<N>` (`lights.set@1` -> `lights_set_v1`);
- a name still taken (by a reserved name or an earlier capability, in the order of their
  full names), or longer than 64, is cut and ends in `_` plus 6 hex digits of the sha256 of
  the capability's full name, so it stays the same when other capabilities come and go.
The way back is `ToolSpec.capability` (the pinned `name@version` the model saw the schema
of), looked up with `capability_of`: names are never parsed back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from loomd.agents.capability import CapabilitySpec
from loomd.errors import LoomdError
from loomd.messages import ToolSpec

__all__ = ["capability_of", "tool_specs"]

MAX_NAME = 64
_BAD = re.compile(r"[^A-Za-z0-9_-]")


def _digest(full: str) -> str:
    return hashlib.sha256(full.encode()).hexdigest()[:6]


def _base(spec: CapabilitySpec, latest: bool) -> str:
    name = _BAD.sub("_", spec.name)
    return name if latest else f"{name}_v{spec.version}"


def _hashed(base: str, full: str) -> str:
    tail = "_" + _digest(full)
    return base[: MAX_NAME - len(tail)] + tail


def tool_specs(
    caps: Iterable[CapabilitySpec | Mapping[str, Any]], reserved: Iterable[str] = ()
) -> list[ToolSpec]:
    """One `ToolSpec` per capability (given as specs or as `caps.list` dicts), named by the
    rules above; `reserved` names (e.g. an MCP server's own tools) are never given out."""
    specs = [c if isinstance(c, CapabilitySpec) else CapabilitySpec.from_dict(c) for c in caps]
    specs.sort(key=lambda s: (s.name, -s.version))
    latest: dict[str, int] = {}
    for s in specs:
        latest[s.name] = max(latest.get(s.name, 0), s.version)
    taken = set(reserved)
    out: list[ToolSpec] = []
    # Plain names are handed out first, so a hashed one never takes a name a plain one wants.
    wanted = {s.full: _base(s, s.version == latest[s.name]) for s in specs}
    plain = [s for s in specs if len(wanted[s.full]) <= MAX_NAME]
    claims: dict[str, str] = {}
    for s in plain:
        claims.setdefault(wanted[s.full], s.full)
    for s in specs:
        name = wanted[s.full]
        if name in taken or claims.get(name) != s.full:
            name = _hashed(name, s.full)
            if name in taken:  # a 24-bit clash: extend the digest with the version
                name = _hashed(f"{name}_{s.version}", s.full + "#")
        if name in taken:
            raise LoomdError(f"no unique tool name for {s.full}")
        taken.add(name)
        out.append(
            ToolSpec(
                name=name,
                description=s.description or s.full,
                parameters=_object_schema(s.schema),
                capability=s.full,
            )
        )
    return out


def _object_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if "type" not in out:
        out["type"] = "object"
    elif out["type"] != "object":  # not an object schema: the broker's check decides
        out = {"type": "object"}
    return out


def capability_of(name: str, tools: Iterable[ToolSpec]) -> str:
    """The capability (`name@version`) a tool name stands for; LoomdError if none."""
    for t in tools:
        if t.name == name:
            if not t.capability:
                raise LoomdError(f"tool {name!r} is no capability")
            return t.capability
    raise LoomdError(f"no tool {name!r}")
