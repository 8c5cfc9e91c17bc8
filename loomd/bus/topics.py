"""Topic names and AMQP-style patterns: `*` matches one segment, `#` zero or more.

Matching walks a trie keyed by segment, so its cost depends on the topic's
depth and the wildcards present, not on how many subscriptions exist. Results
are cached per topic (bounded), invalidated whenever a subscription changes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from loomd.errors import ProtocolError

MAX_TOPIC_BYTES = 255
MAX_SEGMENTS = 32
MAX_HASHES = 4  # `#` segments per pattern: more adds no meaning, only matching work
_BAD_CHARS = frozenset("/+\x7f")

K = TypeVar("K", bound=Hashable)


def _check_segments(name: str, what: str, *, wildcards: bool) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"invalid {what}", "empty")
    if len(name.encode()) > MAX_TOPIC_BYTES:
        raise ProtocolError(f"invalid {what}", f"longer than {MAX_TOPIC_BYTES} bytes")
    parts = name.split(".")
    if len(parts) > MAX_SEGMENTS:
        raise ProtocolError(f"invalid {what}", f"more than {MAX_SEGMENTS} segments")
    if wildcards and parts.count("#") > MAX_HASHES:
        raise ProtocolError(f"invalid {what}", f"more than {MAX_HASHES} '#' segments")
    for part in parts:
        if not part:
            raise ProtocolError(f"invalid {what}", f"{name!r} has an empty segment")
        if _BAD_CHARS.intersection(part) or any(c.isspace() or c < " " for c in part):
            raise ProtocolError(
                f"invalid {what}", f"{name!r} contains whitespace, a control character, '/' or '+'"
            )
        if part in ("*", "#"):
            if not wildcards:
                raise ProtocolError(f"invalid {what}", f"{name!r}: wildcards only in patterns")
        elif "*" in part or "#" in part:
            raise ProtocolError(f"invalid {what}", f"{name!r}: a wildcard must be a whole segment")
    return parts


_valid_topics: set[str] = set()


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a valid concrete topic, else raise ProtocolError."""
    if topic in _valid_topics:  # hot path: a publisher reuses a handful of topics
        return topic
    _check_segments(topic, "topic", wildcards=False)
    if len(_valid_topics) > 8192:
        _valid_topics.clear()
    _valid_topics.add(topic)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is a valid subscription pattern, else raise ProtocolError."""
    _check_segments(pattern, "pattern", wildcards=True)
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Reference matcher, used for single checks and to cross-check the trie. It tracks the
    set of topic positions each pattern prefix can reach: O(pattern x topic) whatever the
    wildcards (a backtracking matcher is exponential in the number of `#`)."""
    top = topic.split(".")
    n = len(top)
    reach = {0}
    for seg in pattern.split("."):
        if seg == "#":
            reach = set(range(min(reach), n + 1))
        elif seg == "*":
            reach = {i + 1 for i in reach if i < n}
        else:
            reach = {i + 1 for i in reach if i < n and top[i] == seg}
        if not reach:
            return False
    return n in reach


class _Node(Generic[K]):
    __slots__ = ("children", "keys")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.keys: set[K] = set()


class TopicTrie(Generic[K]):
    """Maps patterns to sets of keys; `match(topic)` returns every key whose pattern matches."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._root: _Node[K] = _Node()
        self._patterns: dict[K, set[str]] = {}
        self._cache: dict[str, frozenset[K]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return sum(len(p) for p in self._patterns.values())

    def add(self, pattern: str, key: K) -> None:
        validate_pattern(pattern)
        node = self._root
        for seg in pattern.split("."):
            node = node.children.setdefault(seg, _Node())
        node.keys.add(key)
        self._patterns.setdefault(key, set()).add(pattern)
        self._cache.clear()

    def remove(self, pattern: str, key: K) -> bool:
        segs = pattern.split(".")
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for seg in segs:
            child = node.children.get(seg)
            if child is None:
                return False
            path.append((node, seg))
            node = child
        if key not in node.keys:
            return False
        node.keys.discard(key)
        for parent, seg in reversed(path):  # prune empty branches
            child = parent.children[seg]
            if child.keys or child.children:
                break
            del parent.children[seg]
        pats = self._patterns.get(key)
        if pats is not None:
            pats.discard(pattern)
            if not pats:
                del self._patterns[key]
        self._cache.clear()
        return True

    def remove_key(self, key: K) -> None:
        for pattern in list(self._patterns.get(key, ())):
            self.remove(pattern, key)

    def patterns(self, key: K) -> Iterable[str]:
        return tuple(self._patterns.get(key, ()))

    def match(self, topic: str) -> frozenset[K]:
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        found: set[K] = set()
        self._walk(self._root, topic.split("."), 0, found, set())
        result = frozenset(found)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _walk(
        self, node: _Node[K], segs: list[str], i: int, found: set[K], seen: set[tuple[int, int]]
    ) -> None:
        # Each (node, position) is visited once: without this, stacked '#' make the walk
        # exponential; with it, the cost is at most trie nodes x segments^2.
        mark = (id(node), i)
        if mark in seen:
            return
        seen.add(mark)
        hash_node = node.children.get("#")
        if hash_node is not None:
            # '#' absorbs zero or more segments: continue below it from every later position.
            for j in range(i, len(segs) + 1):
                self._walk(hash_node, segs, j, found, seen)
        if i == len(segs):
            found.update(node.keys)
            return
        child = node.children.get(segs[i])
        if child is not None:
            self._walk(child, segs, i + 1, found, seen)
        star = node.children.get("*")
        if star is not None:
            self._walk(star, segs, i + 1, found, seen)
