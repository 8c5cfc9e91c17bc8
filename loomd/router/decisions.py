"""The decision ring: every routing decision, with the facts and policy it was made from,
kept in LMDB (`llm.decisions`: `d/<id>` -> record, `r/<seq>` -> id) for `loomctl route
explain|recent` and the status page. Writes are not awaited on the turn's path; readers
wait for them (`settle()`)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from loomd.errors import LoomdError
from loomd.router.policy import Decision, Facts, Resolved

__all__ = ["DECISIONS_NS", "DecisionRing", "explained"]

DECISIONS_NS = "llm.decisions"


def explained(d: Decision, policy: Resolved, facts: Facts) -> dict[str, Any]:
    """A decision with what it was made from: the ring's record and the dry run's answer."""
    return {
        "route": str(d.route),
        "rule": d.rule,
        "reason": d.reason,
        "est_latency_ms": round(d.est_latency_ms, 1),
        "est_cost": d.est_cost,
        "confidence": round(d.confidence, 3),
        "policy": vars(policy),
        "facts": facts.to_dict(),
    }


class DecisionRing:
    """The last `kept()` decisions in one state namespace, trimmed in order as it grows.

    `kv` is the namespace (`ctx.state.kv(DECISIONS_NS)`), `kept` reads the current limit
    (it reloads), `on_error` hears of a write that failed (the turn goes on regardless)."""

    def __init__(self, kv: Any, kept: Callable[[], int], on_error: Callable[[str], None]) -> None:
        self.kv = kv
        self._kept = kept
        self._on_error = on_error
        self._writes: set[asyncio.Future[Any]] = set()
        # (seq, id) of the kept decisions, oldest first: trimming needs no scan, and sees
        # records whose writes are not yet committed
        self._ring: collections.deque[tuple[int, str]] = collections.deque(
            (int(k[2:]), str(v)) for k, v in kv.items("r/")
        )
        self._seq = self._ring[-1][0] if self._ring else 0
        self._trim()  # the limit may have shrunk since the last run

    def add(self, did: str, record: dict[str, Any]) -> None:
        """Store one decision (not awaited) and trim past the limit."""
        self._seq += 1
        for fut in (
            self.kv.put_nowait(f"d/{did}", record),
            self.kv.put_nowait(f"r/{self._seq:012d}", did),
        ):
            self._watch(fut)
        self._ring.append((self._seq, did))
        self._trim()

    def _watch(self, fut: asyncio.Future[Any]) -> None:
        self._writes.add(fut)
        fut.add_done_callback(self._wrote)

    def _wrote(self, fut: asyncio.Future[Any]) -> None:
        self._writes.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._on_error(f"llm: decision not stored: {fut.exception()}")

    def _trim(self) -> None:
        while len(self._ring) > self._kept():
            seq, old = self._ring.popleft()
            for k in (f"r/{seq:012d}", f"d/{old}"):
                # a task: it submits after the puts already queued, so order holds
                self._watch(asyncio.ensure_future(self.kv.delete(k)))

    async def settle(self) -> None:
        """Wait for the writes in flight (readers call this first)."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def get(self, key: str) -> dict[str, Any]:
        """One decision by id, or by a unique prefix of it (as git does)."""
        await self.settle()
        record = self.kv.get(f"d/{key}")
        if record is None:
            hits = self.kv.keys(f"d/{key}")
            if len(hits) == 1:
                record = self.kv.get(hits[0])
        if record is None:
            raise LoomdError(f"no decision {key!r} in the last {self._kept()}")
        return record  # type: ignore[no-any-return]

    async def recent(self, n: int) -> list[dict[str, Any]]:
        """The last `n` decisions, oldest first."""
        await self.settle()
        ids = [self.kv.get(k) for k in self.kv.keys("r/")[-n:]]
        return [self.kv.get(f"d/{i}") for i in ids if i]
