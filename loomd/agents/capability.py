"""Capabilities: `@capability` functions, their JSON schema (from type hints and the
docstring) and the parameter check that runs before any provider does.

A capability is named `name` or `name@version` (`lights.set@2`); the version is a positive
integer, 1 when not given. The schema is a plain JSON-schema object, so the same value
describes an in-process function, an SDK provider's function and an MCP tool.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CapabilitySpec",
    "capability",
    "check_params",
    "parse_name",
    "schema_for",
    "specs_of",
]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
_ATTR = "__loomd_capability__"


def parse_name(text: str) -> tuple[str, int | None]:
    """`lights.set@2` -> ("lights.set", 2); `lights.set` -> ("lights.set", None)."""
    name, at, version = text.partition("@")
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad capability name {name!r}: letters, digits and . _ : - only")
    if not at:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"bad capability version in {text!r}: a positive integer after @")
    return name, int(version)


@dataclass(frozen=True)
class CapabilitySpec:
    """What a provider offers: a name, a version, a description and the parameters schema."""

    name: str
    version: int = 1
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    # hassil sentence templates the assist matches to this capability ("water the {zone}
    # plants"): each {slot} is a parameter (its enum, its number range, or free text).
    sentences: tuple[str, ...] = ()
    confirm: bool = False  # the assist asks back before it runs ("Unlock the front door?")
    sensitive: bool = False  # acts on the physical world's safety or privacy
    # Devices it acts for ({id, name, domain, area?, aliases?}): the home registry lists them.
    devices: tuple[Mapping[str, Any], ...] = ()
    # Identity patterns (`group:family`, `plugin:scenes`) that may call it at all, before any
    # ACL rule is looked at; empty: whoever the rules allow (docs/design/acl.md).
    allowed_callers: tuple[str, ...] = ()

    @property
    def full(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "schema": dict(self.schema),
            "sentences": list(self.sentences),
            "confirm": self.confirm,
            "sensitive": self.sensitive,
            "devices": [dict(d) for d in self.devices],
            "allowed_callers": list(self.allowed_callers),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CapabilitySpec:
        name, version = parse_name(str(d["name"]))
        v = int(d.get("version") or version or 1)
        schema = d.get("schema") or {"type": "object"}
        if not isinstance(schema, Mapping):
            raise ValueError(f"capability {name}: schema must be an object")
        sentences = d.get("sentences") or ()
        devices = d.get("devices") or ()
        if not isinstance(sentences, list | tuple) or not all(
            isinstance(x, str) for x in sentences
        ):
            raise ValueError(f"capability {name}: sentences must be a list of strings")
        if not isinstance(devices, list | tuple) or not all(
            isinstance(x, Mapping) for x in devices
        ):
            raise ValueError(f"capability {name}: devices must be a list of tables")
        callers = d.get("allowed_callers") or ()
        if not isinstance(callers, list | tuple) or not all(isinstance(x, str) for x in callers):
            raise ValueError(f"capability {name}: allowed_callers must be a list of strings")
        return cls(
            name, v, str(d.get("description") or ""), dict(schema), tuple(sentences),
            bool(d.get("confirm")), bool(d.get("sensitive")), tuple(dict(x) for x in devices),
            tuple(callers),
        )  # fmt: skip


def capability(
    name: str | None = None,
    *,
    version: int = 1,
    description: str | None = None,
    sentences: Sequence[str] = (),
    confirm: bool = False,
    sensitive: bool = False,
    devices: Sequence[Mapping[str, Any]] = (),
    allowed_callers: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function (sync or async) as a capability. `@capability()` names it after the
    function; `@capability("lights.set", version=2)` names it. `sentences` are hassil
    templates the assist matches to it (`"water the {zone} plants"`, each `{slot}` one of
    its parameters); `confirm=True` makes the assist ask back before it runs; `sensitive`
    closes it to callers without a rule that says `sensitive = true`; `allowed_callers`
    (identity patterns) names the only identities that may call it. The function
    is returned unchanged, so it stays callable as plain Python."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        full = name or fn.__name__
        base, v = parse_name(full)
        spec = CapabilitySpec(
            base,
            v or version,
            description if description is not None else _summary(fn.__doc__),
            schema_for(fn),
            tuple(sentences),
            confirm,
            sensitive,
            tuple(dict(d) for d in devices),
            tuple(allowed_callers),
        )
        setattr(fn, _ATTR, spec)
        return fn

    return mark


def specs_of(obj: Any) -> list[tuple[CapabilitySpec, Callable[..., Any]]]:
    """The `@capability` functions (or bound methods) found on a module or an object."""
    out = []
    for attr in dir(obj):
        if attr.startswith("__"):
            continue
        try:
            value = getattr(obj, attr)
        except Exception:  # a property that raises is not a capability
            continue
        spec = getattr(value, _ATTR, None)
        if isinstance(spec, CapabilitySpec) and callable(value):
            out.append((spec, value))
    return out


# -- schema ------------------------------------------------------------------------------------


def _summary(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return text.split("\n\n")[0].replace("\n", " ").strip()


def _param_docs(doc: str | None) -> dict[str, str]:
    """Parameter descriptions from a Google-style `Args:` block or `:param x:` lines."""
    out: dict[str, str] = {}
    text = inspect.cleandoc(doc or "")
    for m in re.finditer(r":param\s+(\w+):\s*(.+)", text):
        out[m.group(1)] = m.group(2).strip()
    block = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.+\n?)+)", text, re.M)
    if block:
        for m in re.finditer(r"^[ \t]+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", block.group(1), re.M):
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = (
            _type_schema(rest[0]) if len(rest) == 1 else {"anyOf": [_type_schema(a) for a in rest]}
        )
        if len(rest) < len(args):
            return {"anyOf": [inner, {"type": "null"}]} if inner else {}
        return inner
    if origin is Literal:
        return {"enum": list(args)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp in (list, tuple) or origin in (list, tuple, typing.Sequence):
        out: dict[str, Any] = {"type": "array"}
        if args and args[-1] is not Ellipsis:
            out["items"] = _type_schema(args[0])
        elif args:
            out["items"] = _type_schema(args[0])
        return out
    if tp is dict or origin in (dict, Mapping):
        return {"type": "object"}
    if tp is bytes:
        return {"type": "string", "contentEncoding": "base64"}
    return {}


def schema_for(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON schema for `fn`'s keyword parameters, from its hints and docstring."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: no types, still callable
        hints = {}
    docs = _param_docs(fn.__doc__)
    props: dict[str, Any] = {}
    required: list[str] = []
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in ("self", "ctx"):
            continue
        prop = _type_schema(hints.get(pname, p.annotation))
        if pname in docs:
            prop["description"] = docs[pname]
        if p.default is p.empty:
            required.append(pname)
        elif isinstance(p.default, str | int | float | bool | type(None)):
            prop["default"] = p.default
        props[pname] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        schema["additionalProperties"] = False
    return schema


# -- validation --------------------------------------------------------------------------------


def _fits(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why `value` does not fit `schema` (the subset this module emits), or None."""
    if "anyOf" in schema:
        if any(_fits(value, s) is None for s in schema["anyOf"]):
            return None
        return "none of the allowed types"
    if "enum" in schema and value not in schema["enum"]:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    tp = schema.get("type")
    if tp is None:
        return None
    kinds = tp if isinstance(tp, list) else [tp]
    checks = {
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "null": lambda v: v is None,
        "array": lambda v: isinstance(v, list | tuple),
        "object": lambda v: isinstance(v, dict),
    }
    if not any(checks.get(k, lambda v: True)(value) for k in kinds):
        return "a value of type " + " or ".join(kinds)
    if "array" in kinds and isinstance(value, list | tuple) and "items" in schema:
        for i, item in enumerate(value):
            why = _fits(item, schema["items"])
            if why is not None:
                return f"[{i}] {why}"
    return None


def check_params(schema: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first bad field and why, or None when `params` fit the object schema."""
    props: Mapping[str, Any] = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in params:
            return name, "required, missing"
    for name, value in params.items():
        if name not in props:
            if schema.get("additionalProperties", True) is False:
                return name, "unknown parameter (parameters: " + (", ".join(props) or "none") + ")"
            continue
        why = _fits(value, props[name])
        if why is not None:
            return name, f"expected {why}, got {type(value).__name__} {value!r:.40}"
    return None
