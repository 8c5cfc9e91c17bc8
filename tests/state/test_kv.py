"""KV namespaces: CBOR round trips, prefixes, deletes, isolation, group commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loomd.errors import ConfigError, StateError
from loomd.state import State

from .helpers import LOOPS, arun

VALUES = {
    "int": 42,
    "neg": -(2**63),
    "big": 2**70,
    "bytes": b"\x00\xffraw",
    "str": "h\u00e9llo",
    "float": 1.5,
    "none": None,
    "list": [1, "two", b"3", [4.0]],
    "nested": {"a": {"b": [1, 2, {"c": b"d"}]}, "n": None, "t": True},
    "intkeys": {1: "one", 2: b"two"},
}


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    async def write() -> None:
        async with State(tmp_path) as st:
            kv = st.kv("agent.a")
            for key, value in VALUES.items():
                await kv.put(key, value)
            assert {k: kv.get(k) for k in VALUES} == VALUES

    async def read() -> None:
        async with State(tmp_path) as st:
            kv = st.kv("agent.a")
            assert {k: kv.get(k) for k in VALUES} == VALUES
            assert kv.get("missing") is None
            assert kv.get("missing", "dflt") == "dflt"

    arun(write)
    arun(read)


def test_prefix_keys_items_and_delete(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            kv = st.kv("ns")
            for key in ["user.1", "user.2", "user.10", "users", "other", "\u00e9t\u00e9.1"]:
                await kv.put(key, key.upper())
            assert kv.keys("user.") == ["user.1", "user.10", "user.2"]
            assert kv.keys("user") == ["user.1", "user.10", "user.2", "users"]
            assert kv.items("\u00e9t\u00e9") == [("\u00e9t\u00e9.1", "\u00c9T\u00c9.1")]
            assert len(kv.keys()) == 6
            assert kv.keys("nope") == []
            assert await kv.delete("user.2") is True
            assert await kv.delete("user.2") is False
            assert kv.get("user.2") is None
            assert kv.keys("user.") == ["user.1", "user.10"]

    arun(main)


def test_namespaces_are_isolated(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            a, ab, b = st.kv("a"), st.kv("a.b"), st.kv("b")
            await asyncio.gather(a.put("k", 1), ab.put("k", 2), b.put("k", 3))
            await a.put("b.k", 4)  # must not leak into namespace "a.b" nor the reverse
            assert (a.get("k"), ab.get("k"), b.get("k")) == (1, 2, 3)
            assert a.keys() == ["b.k", "k"]
            assert ab.keys() == ["k"]
            assert await b.delete("k") is True
            assert (a.get("k"), ab.get("k"), b.get("k")) == (1, 2, None)
            assert st.kv("a") is a

    arun(main)


def test_bad_keys_and_values_fail_in_the_caller(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            kv = st.kv("ns")
            with pytest.raises(ValueError, match="non-empty str"):
                kv.put_nowait("", 1)
            with pytest.raises(ValueError, match="too long"):
                kv.put_nowait("x" * 600, 1)
            with pytest.raises(ValueError, match="namespace"):
                st.kv("")
            with pytest.raises(ValueError, match="namespace"):
                st.kv("a\x00b")
            with pytest.raises(Exception, match=r"serialize|encode"):
                kv.put_nowait("obj", object())
            await kv.put("ok", 1)  # the writer never saw the bad ones
            assert st.stats()["errors"] == 0

    arun(main)


def test_closed_state_refuses(tmp_path: Path) -> None:
    async def main() -> None:
        st = State(tmp_path)
        with pytest.raises(StateError, match="not open"):
            st.kv("x")
        async with st:
            kv = st.kv("x")
            await kv.put("k", 1)
        with pytest.raises(StateError, match="closed"):
            kv.put_nowait("k", 2)
        with pytest.raises(StateError, match="closed"):
            kv.get("k")
        with pytest.raises(StateError, match="not open"):
            st.stats()

    arun(main)


@pytest.mark.parametrize("loop", LOOPS)
def test_group_commit_2000_concurrent_puts(tmp_path: Path, loop: str) -> None:
    n = 2000

    async def write() -> dict[str, object]:
        async with State(tmp_path) as st:
            kv = st.kv("gc")
            futs = [kv.put_nowait(f"k{i:04d}", {"i": i, "b": b"x" * 32}) for i in range(n)]
            assert st.stats()["pending"] == n  # nothing settles before the loop runs again
            await asyncio.gather(*futs)
            assert st.stats()["pending"] == 0
            return st.stats()

    stats = arun(write, loop=loop)
    assert stats["writes"] == n
    assert isinstance(stats["commits"], int)
    assert 1 <= stats["commits"] <= n // 20, stats

    async def check() -> None:
        async with State(tmp_path) as st:
            items = st.kv("gc").items()
            assert len(items) == n
            assert all(v == {"i": int(k[1:]), "b": b"x" * 32} for k, v in items)

    arun(check)


def test_aexit_commits_what_is_queued(tmp_path: Path) -> None:
    futs: list[asyncio.Future[None]] = []

    async def write() -> None:
        async with State(tmp_path, commit_window_ms=50) as st:
            kv = st.kv("q")
            futs.extend(kv.put_nowait(f"k{i}", i) for i in range(100))
        assert all(f.done() and f.exception() is None for f in futs)

    async def check() -> None:
        async with State(tmp_path) as st:
            assert len(st.kv("q").keys()) == 100

    arun(write)
    arun(check)


def test_stats_keys(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        async with State(tmp_path) as st:
            await st.kv("s").put("k", 1)
            return st.stats()

    stats = arun(main)
    assert set(stats) == {
        "path", "map_size", "used_bytes", "journal_entries", "journal_bytes",
        "journal_first_seq", "journal_head", "commits", "writes", "last_commit_ms", "errors",
        "pending", "kv_bytes", "kv_namespaces", "quota_refused",
    }  # fmt: skip
    assert stats["kv_bytes"] == len(b"s\x00k") + 1 and stats["kv_namespaces"] == 1
    assert stats["path"] == str(tmp_path)
    assert stats["map_size"] == 64 << 20
    assert stats["commits"] == 1 and stats["writes"] == 1 and stats["pending"] == 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"map_size_mb": 0}, "state.map_size_mb"),
        ({"map_size_mb": 8, "max_map_size_mb": 4}, "state.max_map_size_mb"),
        ({"commit_window_ms": -1}, "state.commit_window_ms"),
        ({"journal_max_mb": 0}, "state.journal_max_mb"),
        ({"journal_max_age_s": 0}, "state.journal_max_age_s"),
    ],
)
def test_settings_are_checked(tmp_path: Path, kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        State(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_second_open_of_the_same_dir_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            with pytest.raises(StateError, match="already open"):
                async with State(tmp_path):
                    pass
            await st.kv("k").put("still", "works")
            assert st.kv("k").get("still") == "works"

    arun(main)


def test_namespace_and_kv_quotas_refuse_writes_and_count_replacements(tmp_path: Path) -> None:
    """One namespace cannot fill the store (the journal needs room too); a replacement is
    charged only its growth, a delete gives bytes back, and the count survives a reopen."""
    from loomd.state.kv import StateQuotaError

    big = b"x" * (300 * 1024)

    async def main() -> None:
        async with State(tmp_path, namespace_max_mb=1, kv_max_mb=2) as st:
            a = st.kv("a")
            for i in range(3):
                await a.put(f"k{i}", big)
            await a.put("k0", big)  # a replacement of the same size fits
            with pytest.raises(StateQuotaError, match="namespace 'a'"):
                await a.put("k3", big)
            assert await a.delete("k2")
            await a.put("k3", big)  # room again
            for ns in ("b", "c"):
                for i in range(2):
                    try:
                        await st.kv(ns).put(f"k{i}", big)
                    except StateQuotaError as exc:
                        assert "kv_max_mb" in str(exc)
            assert st.quota.total <= 2 << 20
            assert st.stats()["quota_refused"] >= 2
            used = dict(st.quota.used)
        async with State(tmp_path, namespace_max_mb=1, kv_max_mb=2) as st:
            assert st.quota.used == used  # recounted from the store at open

    arun(main)
