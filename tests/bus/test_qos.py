"""The pure per-subscription queues: realtime, batched (clock and rng injected), reliable."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from loomd.bus.qos import BatchedQueue, RealtimeQueue, ReliableQueue


@dataclass(frozen=True)
class Ev:
    topic: str
    n: int


def evs(topic: str, n: int) -> list[Ev]:
    return [Ev(topic, i) for i in range(n)]


# -- realtime -----------------------------------------------------------------------------------


def test_realtime_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RealtimeQueue(0)
    with pytest.raises(ValueError):
        RealtimeQueue(4, "drop_newest")


def test_drop_oldest_is_bounded_counts_drops_and_keeps_order() -> None:
    q: RealtimeQueue[Ev] = RealtimeQueue(3)
    assert q.policy == "drop_oldest"
    dropped = [q.push(e) for e in evs("t", 10)]
    assert dropped == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert len(q) == 3
    assert q.peek() == Ev("t", 7)
    assert q.pop_many(10) == [Ev("t", 7), Ev("t", 8), Ev("t", 9)]
    assert len(q) == 0
    assert q.pop_many(5) == []


def test_drop_oldest_never_exceeds_bound_while_interleaved() -> None:
    q: RealtimeQueue[Ev] = RealtimeQueue(5)
    out: list[Ev] = []
    total_dropped = 0
    for i in range(1000):
        total_dropped += q.push(Ev("t", i))
        assert len(q) <= 5
        if i % 7 == 0:
            out.append(q.pop())
    out.extend(q.pop_many(100))
    assert total_dropped + len(out) == 1000
    assert [e.n for e in out] == sorted(e.n for e in out)  # order kept


def test_keep_latest_keeps_newest_per_topic() -> None:
    q: RealtimeQueue[Ev] = RealtimeQueue(8, "keep_latest")
    dropped = 0
    for i in range(5):
        for topic in ("a", "b", "c"):
            dropped += q.push(Ev(topic, i))
    assert len(q) == 3
    assert dropped == 3 * 5 - 3
    got = q.pop_many(10)
    assert {e.topic: e.n for e in got} == {"a": 4, "b": 4, "c": 4}
    assert len(q) == 0


def test_keep_latest_order_is_by_last_update() -> None:
    q: RealtimeQueue[Ev] = RealtimeQueue(8, "keep_latest")
    assert q.push(Ev("a", 1)) == 0
    assert q.push(Ev("b", 1)) == 0
    assert q.push(Ev("a", 2)) == 1  # replaces a=1
    assert q.peek() == Ev("b", 1)
    assert q.pop_many(5) == [Ev("b", 1), Ev("a", 2)]


def test_keep_latest_is_bounded_by_topics() -> None:
    q: RealtimeQueue[Ev] = RealtimeQueue(2, "keep_latest")
    assert q.push(Ev("a", 0)) == 0
    assert q.push(Ev("b", 0)) == 0
    assert q.push(Ev("c", 0)) == 1  # evicts the stalest topic, a
    assert len(q) == 2
    assert q.push(Ev("b", 1)) == 1  # replaces b=0, no eviction
    assert len(q) == 2
    assert q.pop_many(5) == [Ev("c", 0), Ev("b", 1)]
    total = sum(q.push(Ev(f"t{i}", i)) for i in range(100))
    assert total == 98
    assert len(q) == 2
    assert q.pop_many(5) == [Ev("t98", 98), Ev("t99", 99)]


# -- batched ------------------------------------------------------------------------------------


def drain_pushes(q: BatchedQueue[int], items: range, now: float) -> tuple[list[int], int]:
    """Push `items` at time `now`, taking every batch as soon as it is due (a reader that
    keeps up). Returns (released, sampled)."""
    out: list[int] = []
    sampled = 0
    for i in items:
        sampled += q.push(i, now)
        if q.due(now):
            out.extend(q.take())
    return out, sampled


def test_batched_releases_by_size() -> None:
    q: BatchedQueue[int] = BatchedQueue(batch_max=3, interval_s=10.0, budget=100)
    assert not q.due(0.0)
    assert q.deadline() is None
    assert q.push(1, 0.0) == 0
    assert q.push(2, 0.1) == 0
    assert not q.due(0.2)
    assert q.push(3, 0.2) == 0
    assert q.due(0.2)
    assert q.take() == [1, 2, 3]
    assert len(q) == 0
    assert not q.due(100.0)
    assert q.deadline() is None
    assert q.take() == []


def test_batched_releases_by_time_with_injected_clock() -> None:
    q: BatchedQueue[str] = BatchedQueue(batch_max=100, interval_s=0.5, budget=1000)
    q.push("a", 10.0)
    q.push("b", 10.3)
    assert q.deadline() == pytest.approx(10.5)  # counted from the first event of the batch
    assert not q.due(10.49)
    assert q.due(10.5)
    assert q.take() == ["a", "b"]
    # A new batch starts at the next event, not at take().
    q.push("c", 42.0)
    assert q.deadline() == pytest.approx(42.5)
    assert not q.due(42.4)
    assert q.due(43.0)
    assert q.take() == ["c"]


def test_batched_within_budget_nothing_is_sampled() -> None:
    q: BatchedQueue[int] = BatchedQueue(batch_max=3, interval_s=1.0, budget=10)
    out, sampled = drain_pushes(q, range(10), 0.0)
    out.extend(q.take())
    assert sampled == 0
    assert out == list(range(10))


def test_batched_over_budget_is_thinned_progressively() -> None:
    # The n-th event of an interval (1-based) past the budget is kept only if n is a
    # multiple of ceil(n / budget): every 2nd, then every 3rd, ...
    q: BatchedQueue[int] = BatchedQueue(batch_max=1000, interval_s=1.0, budget=10)
    sampled = sum(q.push(n, 0.0) for n in range(1, 41))
    kept = q.take()
    assert kept == [*range(1, 11), 12, 14, 16, 18, 20, 21, 24, 27, 30, 32, 36, 40]
    assert sampled == 40 - len(kept)


def test_batched_budget_spans_batches_of_one_interval() -> None:
    # Releasing by size does not reset the interval's budget.
    q: BatchedQueue[int] = BatchedQueue(batch_max=5, interval_s=1.0, budget=10)
    out, sampled = drain_pushes(q, range(1, 21), 0.5)
    out.extend(q.take())
    assert out == [*range(1, 11), 12, 14, 16, 18, 20]
    assert sampled == 5


def test_batched_next_interval_starts_a_fresh_budget() -> None:
    q: BatchedQueue[int] = BatchedQueue(batch_max=1000, interval_s=1.0, budget=10)
    assert sum(q.push(n, 5.0) for n in range(40)) > 0
    q.take()
    # Same interval, events 41..45: only 45 (a multiple of ceil(45 / 10)) is kept.
    assert sum(q.push(n, 5.99) for n in range(41, 46)) == 4
    assert q.take() == [45]
    assert sum(q.push(n, 6.0) for n in range(10)) == 0  # new interval
    assert q.take() == list(range(10))


def test_batched_flood_is_thinned_sublinearly_and_deterministically() -> None:
    def run() -> tuple[list[int], int]:
        q: BatchedQueue[int] = BatchedQueue(batch_max=100, interval_s=1.0, budget=100)
        out, sampled = drain_pushes(q, range(100_000), 0.0)
        return out + q.take(), sampled

    out, sampled = run()
    assert len(out) + sampled == 100_000
    assert out == sorted(out)  # arrival order
    # ~ budget * H(budget) + one per `budget` events past budget**2: thinned, not cut off.
    assert 100 < len(out) < 2000
    assert out[-1] == 99_999  # event n = 100,000 is a multiple of ceil(n / budget)
    assert run() == (out, sampled)


# -- reliable -----------------------------------------------------------------------------------


def test_reliable_never_drops_and_reports_pressure() -> None:
    q: ReliableQueue[int] = ReliableQueue(limit=3)
    pressure = []
    for i in range(10):
        assert q.push(i) == 0
        pressure.append(q.pressured)
    assert pressure == [False, False, True, True, True, True, True, True, True, True]
    assert len(q) == 10
    assert q.peek() == 0
    assert q.pop() == 0
    assert q.pop_many(6) == [1, 2, 3, 4, 5, 6]
    assert q.pressured  # 3 left == limit
    assert q.pop() == 7
    assert not q.pressured
    assert q.pop_many(10) == [8, 9]
    assert q.pop_many(1) == []
