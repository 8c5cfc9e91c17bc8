"""Per-subscription queues, one per QoS class. Pure: no I/O, the clock is an argument."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class HasTopic(Protocol):
    topic: str


E = TypeVar("E", bound=HasTopic)


class RealtimeQueue(Generic[E]):
    """Bounded; when full, drop the oldest event (`drop_oldest`) or keep only the newest
    event per topic (`keep_latest`). Pushing never blocks. Returns how many were dropped."""

    __slots__ = ("_items", "_latest", "maxlen", "policy")

    def __init__(self, maxlen: int, policy: str = "drop_oldest") -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        if policy not in ("drop_oldest", "keep_latest"):
            raise ValueError(f"unknown realtime policy {policy!r}")
        self.maxlen = maxlen
        self.policy = policy
        self._items: deque[E] = deque()
        self._latest: OrderedDict[str, E] = OrderedDict()

    def __len__(self) -> int:
        return len(self._latest) if self.policy == "keep_latest" else len(self._items)

    def push(self, item: E) -> int:
        return len(self.push_evict(item))

    def append(self, item: E) -> E | None:
        """drop_oldest's push: queue `item`, return the one it pushed out (if any)."""
        items = self._items
        items.append(item)
        return items.popleft() if len(items) > self.maxlen else None

    def push_evict(self, item: E) -> list[E] | tuple[()]:
        """Queue `item`; return the items it pushed out (the caller counts them by topic)."""
        if self.policy == "keep_latest":
            latest = self._latest
            old = latest.get(item.topic)
            out: list[E] = [] if old is None else [old]
            latest[item.topic] = item
            latest.move_to_end(item.topic)
            if len(latest) > self.maxlen:
                out.append(latest.popitem(last=False)[1])
            return out
        items = self._items
        items.append(item)
        if len(items) > self.maxlen:
            return [items.popleft()]
        return ()

    def items(self) -> list[E]:
        """What is queued, oldest first (a copy)."""
        return list(self._latest.values()) if self.policy == "keep_latest" else list(self._items)

    def pop_first(self) -> E | None:
        """The oldest item, or None when empty (the in-process consumer's hot path)."""
        if self.policy == "keep_latest":
            return self._latest.popitem(last=False)[1] if self._latest else None
        return self._items.popleft() if self._items else None

    def pop(self) -> E:
        if self.policy == "keep_latest":
            return self._latest.popitem(last=False)[1]
        return self._items.popleft()

    def peek(self) -> E:
        if self.policy == "keep_latest":
            return next(iter(self._latest.values()))
        return self._items[0]

    def unpop(self, items: list[E]) -> int:
        """Put taken items back at the head, oldest first; return how many could not go
        back (keep_latest: a newer event of the same topic arrived meanwhile)."""
        if self.policy == "drop_oldest":
            self._items.extendleft(reversed(items))
            return 0
        lost = 0
        for item in reversed(items):
            if item.topic in self._latest:
                lost += 1
            else:
                self._latest[item.topic] = item
                self._latest.move_to_end(item.topic, last=False)
        return lost

    def pop_many(self, n: int) -> list[E]:
        if self.policy == "keep_latest":
            latest = self._latest
            return [latest.popitem(last=False)[1] for _ in range(min(n, len(latest)))]
        items = self._items
        return [items.popleft() for _ in range(min(n, len(items)))]


class BatchedQueue(Generic[T]):
    """Collects events and releases them as a batch of `batch_max`, or `interval_s` after
    the first event of a batch.

    `budget` is how many events one interval may carry. Past it, the queue samples:
    the n-th event of the interval is kept only if n is a multiple of ceil(n / budget),
    so a flood is thinned more and more (every 2nd, then every 3rd, ...) instead of
    cut off; the rest are reported as sampled out.
    """

    __slots__ = ("_buf", "_started", "_win_n", "_win_start", "batch_max", "budget", "interval_s")

    def __init__(self, batch_max: int, interval_s: float, budget: int) -> None:
        self.batch_max = batch_max
        self.interval_s = interval_s
        self.budget = budget
        self._buf: list[T] = []
        self._started: float | None = None
        self._win_start = float("-inf")
        self._win_n = 0

    def __len__(self) -> int:
        return len(self._buf)

    def push(self, item: T, now: float) -> int:
        """Add one event; return 1 if it was sampled out, else 0."""
        if now - self._win_start >= self.interval_s:
            self._win_start, self._win_n = now, 0
        self._win_n += 1
        n = self._win_n
        if n > self.budget and n % -(-n // self.budget):
            return 1
        if self._started is None:
            self._started = now
        self._buf.append(item)
        return 0

    def due(self, now: float) -> bool:
        if not self._buf:
            return False
        assert self._started is not None
        return len(self._buf) >= self.batch_max or now - self._started >= self.interval_s

    def deadline(self) -> float | None:
        """When the current batch is due by time (None if empty)."""
        return None if self._started is None or not self._buf else self._started + self.interval_s

    def take(self) -> list[T]:
        """Release everything buffered (in arrival order) and start a new batch."""
        items, self._buf, self._started = self._buf, [], None
        return items


class ReliableQueue(Generic[T]):
    """Never drops by itself. `limit` is a soft bound: above it the queue reports pressure
    and the broker withholds publish credits for a while; a subscriber that stays behind
    (or passes its byte budget) is shed by the broker (`clear`): detached to catch up from
    the journal, or evicted."""

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pressured(self) -> bool:
        return len(self._items) >= self.limit

    def push(self, item: T) -> int:
        self._items.append(item)
        return 0

    def pop(self) -> T:
        return self._items.popleft()

    def peek(self) -> T:
        return self._items[0]

    def unpop(self, items: list[T]) -> None:
        """Put taken items back at the head, in their order (a socket refused them)."""
        self._items.extendleft(reversed(items))

    def pop_many(self, n: int) -> list[T]:
        items = self._items
        return [items.popleft() for _ in range(min(n, len(items)))]

    def clear(self) -> list[T]:
        """Remove and return everything queued, oldest first."""
        items = list(self._items)
        self._items.clear()
        return items
