"""Topic/pattern validation and AMQP matching: the reference matcher, the trie, the cache."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loomd.bus.topics import (
    MAX_HASHES,
    MAX_SEGMENTS,
    MAX_TOPIC_BYTES,
    TopicTrie,
    canonical,
    match_cost,
    matches,
    validate_pattern,
    validate_topic,
)
from loomd.errors import ProtocolError

# (pattern, topic, expected) under AMQP semantics: `*` exactly one segment, `#` zero or more.
TABLE: list[tuple[str, str, bool]] = [
    # literals
    ("a", "a", True),
    ("a", "b", False),
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("a.b", "a.b", True),
    ("a.b", "a.bc", False),
    ("a.b", "ab", False),
    ("sensor.kitchen.temp", "sensor.kitchen.temp", True),
    # `*`: exactly one segment
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.b", "a.b", True),
    ("*.b", "b", False),
    ("*.b", "a.b.b", False),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", "a.b.c", False),
    ("sensor.*.temp", "sensor.kitchen.temp", True),
    ("sensor.*.temp", "sensor.kitchen.hum", False),
    ("sensor.*.temp", "sensor.temp", False),
    # `#` alone matches everything
    ("#", "a", True),
    ("#", "a.b", True),
    ("#", "a.b.c.d.e", True),
    # trailing `#` matches zero segments too
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b", False),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    # leading `#`
    ("#.c", "c", True),
    ("#.c", "a.c", True),
    ("#.c", "a.b.c", True),
    ("#.c", "a.b", False),
    ("#.c", "c.a", False),
    # inner `#`
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.d.c", True),
    ("a.#.c", "a.c.c", True),
    ("a.#.c", "a.b", False),
    ("a.#.c", "a", False),
    ("a.#.c", "c", False),
    ("a.#.c", "a.c.d", False),
    ("a.#.c", "b.a.c", False),
    # `*` then `#`: at least one segment
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("a.*.#", "b.c", False),
    ("*.#", "a", True),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.b.c", True),
    # several `#`
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("#.*.#", "a", True),
    ("#.*.#", "a.b.c", True),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.b", True),
    ("a.#.#.b", "a.x", False),
    ("#.a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.y", False),
    ("#.a.#.b.#", "a.b", True),
    ("#.a.#.b.#", "x.a.y.b.z", True),
    ("#.a.#.b.#", "b.a", False),
    ("#.a.#.b.#", "a.a.a", False),
]

PATTERNS = sorted({p for p, _, _ in TABLE})
TOPICS = sorted({t for _, t, _ in TABLE})


def oracle(pattern: str, topic: str) -> bool:
    """An independent matcher: every segment prefixed by '.', `#` = (.seg)*."""
    parts = []
    for seg in pattern.split("."):
        if seg == "*":
            parts.append(r"\.[^.]+")
        elif seg == "#":
            parts.append(r"(?:\.[^.]+)*")
        else:
            parts.append(r"\." + re.escape(seg))
    return re.fullmatch("".join(parts), "." + topic) is not None


def test_oracle_agrees_with_table() -> None:
    for pattern, topic, expected in TABLE:
        assert oracle(pattern, topic) is expected, (pattern, topic)


@pytest.mark.parametrize(("pattern", "topic", "expected"), TABLE)
def test_reference_matcher(pattern: str, topic: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert validate_topic(topic) == topic
    assert matches(pattern, topic) is expected


def test_trie_matches_table() -> None:
    trie: TopicTrie[str] = TopicTrie()
    for p in PATTERNS:
        trie.add(p, p)
    assert len(trie) == len(PATTERNS)
    for topic in TOPICS:
        want = {p for p in PATTERNS if matches(p, topic)}
        assert trie.match(topic) == want, topic
    for pattern, topic, expected in TABLE:
        assert (pattern in trie.match(topic)) is expected, (pattern, topic)


def test_trie_with_one_pattern_each() -> None:
    # A lone pattern must not borrow matches from siblings in a shared trie.
    for pattern, topic, expected in TABLE:
        trie: TopicTrie[int] = TopicTrie()
        trie.add(pattern, 1)
        assert trie.match(topic) == ({1} if expected else set()), (pattern, topic)


# -- validation ---------------------------------------------------------------------------------

BAD_EITHER = (
    [
        "",
        ".",
        "..",
        "a..b",
        ".a",
        "a.",
        "a*",
        "*a",
        "a#",
        "#b",
        "a.b*",
        "a.#b.c",
        "a/b",
        "a+b",
        "a\x00b",
        "a" * (MAX_TOPIC_BYTES + 1),
        "\u00e9" * (MAX_TOPIC_BYTES // 2 + 1),  # 2 bytes each in UTF-8: over the byte limit
        ".".join(["a"] * (MAX_SEGMENTS + 1)),
    ]
    + [f"a{ws}b" for ws in string.whitespace]
    + [f"{ws}a" for ws in string.whitespace]
)


@pytest.mark.parametrize("name", BAD_EITHER)
def test_invalid_topic_rejected(name: str) -> None:
    with pytest.raises(ProtocolError):
        validate_topic(name)


@pytest.mark.parametrize("name", BAD_EITHER)
def test_invalid_pattern_rejected(name: str) -> None:
    with pytest.raises(ProtocolError):
        validate_pattern(name)


@pytest.mark.parametrize("name", ["*", "#", "a.*", "a.#", "*.b", "a.#.c", "#.#"])
def test_wildcards_rejected_in_topics(name: str) -> None:
    with pytest.raises(ProtocolError):
        validate_topic(name)
    assert validate_pattern(name) == name


@pytest.mark.parametrize("value", [None, 5, b"a.b"])
def test_non_string_rejected(value: object) -> None:
    with pytest.raises(ProtocolError):
        validate_topic(value)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        validate_pattern(value)  # type: ignore[arg-type]


def test_limits_are_inclusive() -> None:
    longest = "a" * MAX_TOPIC_BYTES
    deepest = ".".join(["a"] * MAX_SEGMENTS)
    for name in (longest, deepest, "sensor.kitchen-2.temp_c", "\u00e9t\u00e9.x"):
        assert validate_topic(name) == name
        assert validate_pattern(name) == name


def test_validation_repeats() -> None:
    # validate_topic caches valid topics; a rejected one must stay rejected.
    for _ in range(3):
        assert validate_topic("a.b") == "a.b"
        with pytest.raises(ProtocolError):
            validate_topic("a..b")


def test_trie_add_rejects_invalid_pattern_and_stays_unchanged() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.b", 1)
    for bad in ("", "a..b", "a*", "a b"):
        with pytest.raises(ProtocolError):
            trie.add(bad, 2)
    assert len(trie) == 1
    assert trie.match("a.b") == {1}
    assert tuple(trie.patterns(2)) == ()


# -- trie bookkeeping ---------------------------------------------------------------------------


def count_nodes(trie: TopicTrie[int]) -> int:
    """Nodes below the root (a structural check on pruning)."""
    stack = list(trie._root.children.values())
    n = 0
    while stack:
        node = stack.pop()
        n += 1
        stack.extend(node.children.values())
    return n


def test_add_remove_and_remove_key() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.*", 1)
    trie.add("a.#", 1)
    trie.add("a.b", 2)
    trie.add("a.b", 2)  # idempotent
    assert len(trie) == 3
    assert set(trie.patterns(1)) == {"a.*", "a.#"}
    assert trie.match("a.b") == {1, 2}
    assert trie.match("a") == {1}

    assert trie.remove("a.*", 1) is True
    assert trie.remove("a.*", 1) is False  # already gone
    assert trie.remove("a.*", 2) is False  # never there
    assert trie.remove("x.y.z", 1) is False
    assert trie.match("a.b") == {1, 2}  # still via a.#
    assert set(trie.patterns(1)) == {"a.#"}

    trie.remove_key(1)
    assert trie.match("a.b") == {2}
    assert trie.match("a") == frozenset()
    assert tuple(trie.patterns(1)) == ()
    trie.remove_key(1)  # no-op
    assert len(trie) == 1


def test_cache_invalidated_on_add_and_remove() -> None:
    trie: TopicTrie[int] = TopicTrie()
    assert trie.match("a.b") == frozenset()  # cached as empty
    trie.add("a.*", 1)
    assert trie.match("a.b") == {1}
    trie.add("#", 2)
    assert trie.match("a.b") == {1, 2}
    trie.remove("a.*", 1)
    assert trie.match("a.b") == {2}
    trie.remove_key(2)
    assert trie.match("a.b") == frozenset()


def test_small_cache_evicts_correctly() -> None:
    trie: TopicTrie[int] = TopicTrie(cache_size=2)
    trie.add("t.*", 1)
    for i in range(20):
        assert trie.match(f"t.{i}") == {1}
        assert trie.match(f"u.{i}") == frozenset()


def test_removing_everything_prunes_the_trie() -> None:
    trie: TopicTrie[int] = TopicTrie()
    pats = ["a.b.c", "a.b", "a.#", "a.*.c", "#", "#.x.#", "*.*.*", "q.r.s.t"]
    for key, p in enumerate(pats):
        trie.add(p, key)
        trie.add(p, 100 + key)
    assert count_nodes(trie) > 0
    for key, p in enumerate(pats):
        assert trie.remove(p, key)
    # Half removed: nodes that still carry keys (or lead to some) must survive.
    assert trie.match("a.b.c") == {100, 102, 103, 104, 106}
    for key in range(len(pats)):
        trie.remove_key(100 + key)
    assert len(trie) == 0
    assert count_nodes(trie) == 0
    assert trie.match("a.b.c") == frozenset()


def test_remove_prunes_only_dead_branches() -> None:
    trie: TopicTrie[int] = TopicTrie()
    trie.add("a.b.c.d", 1)
    trie.add("a.b", 2)
    assert count_nodes(trie) == 4
    trie.remove("a.b.c.d", 1)
    assert count_nodes(trie) == 2  # a, a.b kept for key 2
    assert trie.match("a.b") == {2}


class CountingTrie(TopicTrie[int]):
    """Adds up the trie's own count of node visits (`work`) over uncached matches."""

    visits = 0

    def _run(self, segs: list[str]) -> set[int]:
        found = super()._run(segs)
        self.visits += self.work
        return found


def test_match_cost_independent_of_unrelated_subscriptions() -> None:
    relevant = {"a.b.c": 1, "a.*.c": 2, "a.#": 3, "#.c": 4, "*.b.*": 5}
    small = CountingTrie()
    big = CountingTrie()
    for p, k in relevant.items():
        small.add(p, k)
        big.add(p, k)
    key = 1000
    for i in range(10_000):
        for tail in ("b.c", "#", "*.c"):
            big.add(f"other{i}.{tail}", key)
            key += 1
    assert len(big) == len(relevant) + 30_000
    for topic, want in [("a.b.c", {1, 2, 3, 4, 5}), ("a.x.c", {2, 3, 4}), ("z.b.c", {4, 5})]:
        small.visits = big.visits = 0
        assert small.match(topic) == want
        assert big.match(topic) == want
        assert big.visits == small.visits > 0, topic
    base = 1000 + 77 * 3
    assert big.match("other77.b.c") == {base, base + 1, base + 2, 4, 5}


# -- properties ---------------------------------------------------------------------------------

topic_seg = st.sampled_from(["a", "b", "c"])
pattern_seg = st.sampled_from(["a", "b", "*", "#"])
topics_st = st.lists(topic_seg, min_size=1, max_size=5).map(".".join)
# at most MAX_HASHES '#' segments: more are refused at the edge (bounded matching work)
patterns_st = (
    st.lists(pattern_seg, min_size=1, max_size=5)
    .filter(lambda segs: segs.count("#") <= MAX_HASHES)
    .map(".".join)
)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns_st, topic=topics_st)
def test_reference_matches_oracle(pattern: str, topic: str) -> None:
    assert matches(pattern, topic) is oracle(pattern, topic)


@settings(max_examples=200, deadline=None)
@given(
    pats=st.lists(patterns_st, min_size=1, max_size=10),
    topics=st.lists(topics_st, min_size=1, max_size=10),
)
def test_trie_equals_reference(pats: list[str], topics: list[str]) -> None:
    trie: TopicTrie[int] = TopicTrie()
    for i, p in enumerate(pats):
        trie.add(p, i)
    for t in topics:
        assert trie.match(t) == {i for i, p in enumerate(pats) if matches(p, t)}, t


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("add"), patterns_st, st.integers(0, 3)),
        st.tuples(st.just("remove"), patterns_st, st.integers(0, 3)),
        st.tuples(st.just("remove_key"), st.just(""), st.integers(0, 3)),
        st.tuples(st.just("match"), topics_st, st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops_st)
def test_trie_against_model_with_cache(ops: list[tuple[str, str, int]]) -> None:
    trie: TopicTrie[int] = TopicTrie(cache_size=4)
    model: set[tuple[str, int]] = set()
    for op, arg, key in ops:
        if op == "add":
            trie.add(arg, key)
            model.add((arg, key))
        elif op == "remove":
            assert trie.remove(arg, key) is ((arg, key) in model)
            model.discard((arg, key))
        elif op == "remove_key":
            trie.remove_key(key)
            model = {(p, k) for p, k in model if k != key}
        else:
            assert trie.match(arg) == {k for p, k in model if matches(p, arg)}
        assert len(trie) == len(model)
    for t in ("a", "a.b", "c.c.c", "b.a.b.a"):
        assert trie.match(t) == {k for p, k in model if matches(p, t)}
    for _p, k in list(model):
        trie.remove_key(k)
    assert count_nodes(trie) == 0


def test_stacked_hashes_match_in_polynomial_time() -> None:
    """Repeated '#' used to make both matchers exponential (16 of them: > 45 s)."""
    from loomd.bus.topics import MAX_HASHES

    pattern = ".".join(["#"] * MAX_HASHES + ["x"])
    topic = ".".join(["a"] * 31)
    trie = CountingTrie()
    trie.add(pattern, 1)
    assert trie.match(topic) == frozenset()
    # canonical: one '#' then 'x'; each node at most once per segment
    assert 0 < trie.visits <= 3 * 32
    assert not matches(pattern, topic)
    assert matches(pattern, topic + ".x")
    with pytest.raises(ProtocolError, match="'#' segments"):
        validate_pattern(".".join(["#"] * (MAX_HASHES + 1)))


# -- matching cost (issue 19: 256 patterns of ~28 wildcards with four '#' each) ---------------


def test_canonical_form_matches_the_same_topics() -> None:
    assert canonical("#.*.#.*") == "*.*.#"
    assert canonical("a.#.#.b.*.#") == "a.#.b.*.#"
    assert canonical("a.*.b") == "a.*.b"
    for pat in ["#.*.#.*", "a.#.#.b.*.#", "*.#.*", "#.a.#"]:
        for n in range(0, 6):
            for topic in (".".join(["a"] * n), ".".join(["b", "a"] * n)):
                if topic:
                    assert matches(pat, topic) is matches(canonical(pat), topic), (pat, topic)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns_st, topic=topics_st)
def test_canonical_is_equivalent(pattern: str, topic: str) -> None:
    assert matches(canonical(pattern), topic) is matches(pattern, topic)


def test_match_cost_figures() -> None:
    assert match_cost("a.b.c") == 4
    assert match_cost("sensor.#") == 34
    assert match_cost("#") == 34
    # wildcards only: four '#' anywhere collapse to one at the end of the run
    assert match_cost("#.*.*.#.*.#.*.#") == match_cost("*.*.*.*.#") == 34
    assert match_cost("#.x.#.x.#.x.#.x") > 200


def test_wildcard_runs_share_one_path_and_match_cheaply() -> None:
    """The attack of issue 19: 256 subscriptions of 24-31 segments of `*` with four `#`
    at random places; the depth-first walk visited ~62 ms worth of (node, position) pairs
    for each 32-segment topic."""
    import random

    rng = random.Random(7)
    trie = CountingTrie()
    for i in range(256):
        segs = ["*"] * rng.randint(20, 27)
        for _ in range(4):
            segs.insert(rng.randint(0, len(segs)), "#")
        trie.add(".".join(segs), i)
    assert count_nodes(trie) <= 27 + 8  # one chain of `*`, a `#` below some of them
    topic = ".".join(f"s{i}" for i in range(32))
    assert trie.match(topic) == set(range(256))
    assert trie.visits <= 32 * 4


def test_a_literal_pattern_invalidates_only_its_own_topic() -> None:
    """A request's reply subscription (a literal `thread.<id>.reply`, made and dropped per
    request) must not cost every other topic its cached route."""
    trie = CountingTrie()
    trie.add("sensor.#", 1)
    assert trie.match("sensor.a") == {1}
    runs = trie.visits
    trie.add("thread.abc.reply", 2)
    assert trie.match("thread.abc.reply") == {2}
    assert trie.match("sensor.a") == {1} and trie.visits == runs + trie.work  # cached
    before = trie.visits
    trie.add("sensor.a", 3)  # a literal on that very topic: its entry is dropped
    assert trie.match("sensor.a") == {1, 3} and trie.visits > before
    trie.remove("thread.abc.reply", 2)
    assert trie.match("thread.abc.reply") == frozenset()
    before = trie.visits
    trie.add("*.b", 4)  # wildcards: everything is matched again
    assert trie.match("sensor.a") == {1, 3} and trie.visits > before
