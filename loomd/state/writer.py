"""The single writer thread: group commit, map growth, retention, one wake-up per batch."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import lmdb

from loomd.errors import StateError, StateFullError
from loomd.state.env import MIB, Env
from loomd.state.ledger import LEDGER_KEY, Ledger, Retention, trim
from loomd.state.records import SEQ, encode_entry

log = logging.getLogger(__name__)

# Op kinds. Ops are plain tuples (kind, key, value, future, size) because building one is
# on the append hot path, where a tuple is several times cheaper than an object. In place
# of the future an op may carry a callback (`submit_then`), called with the outcome in the
# settle callback itself: a future's callbacks would run one loop turn later.
PUT, DELETE, APPEND = 0, 1, 2
_KIND_NAMES = ("put", "delete", "append")
Then = Callable[[Any], None]  # called with the outcome: the op's result or its exception
Op = tuple[int, Any, Any, "asyncio.Future[Any] | Then", int]

# One txn stays well below LMDB's dirty-page limit (TxnFullError) and one batch's
# latency stays bounded, whatever the commit window lets in.
MAX_BATCH_OPS = 16384
MAX_BATCH_BYTES = 8 * MIB
# While idle the writer wakes this often to apply age retention, which needs no write
# to become due.
IDLE_TICK_S = 5.0

_pack_seq = SEQ.pack


class Writer:
    """Owns every write txn. Callers on the loop enqueue ops and get futures back."""

    def __init__(
        self,
        env: Env,
        loop: asyncio.AbstractEventLoop,
        ledger: Ledger,
        *,
        retention: Retention,
        clock: Callable[[], int],
        commit_window_s: float,
        max_map_size: int,
    ) -> None:
        self._env = env
        self.loop = loop
        self.ledger = ledger  # published after each commit; read from any thread
        self._retention = retention
        self._clock = clock
        self._window = commit_window_s
        self._max_map_size = max_map_size
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self.enqueue = self._queue.put  # bound once: the append path calls it per event
        self.closing = False
        self._stopped: asyncio.Future[None] = loop.create_future()
        # daemon: a State never exited must not hang interpreter exit; LMDB is crash-safe,
        # and __aexit__ (the normal path) joins the thread after the last commit.
        self._thread = threading.Thread(target=self._run, name="loomd-state-writer", daemon=True)
        self._trim_backlog = False
        self._full = False
        self.pending = 0  # ops submitted, not yet settled; touched only on the loop thread
        self.commits = 0
        self.writes = 0
        self.errors = 0
        self.last_commit_ms = 0.0

    # -- loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, kind: int, key: Any, value: Any, size: int) -> asyncio.Future[Any]:
        """Queue one op. Call from the event loop thread only (asyncio futures are not
        thread-safe)."""
        if self.closing:
            raise StateError("state is closed")
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.enqueue((kind, key, value, fut, size))
        self.pending += 1
        return fut

    def submit_then(self, kind: int, key: Any, value: Any, size: int, then: Then) -> None:
        """Queue one op; `then(outcome)` runs on the loop once it is durable (or failed),
        in queue order with the batch's other ops. Call from the event loop thread only."""
        if self.closing:
            raise StateError("state is closed")
        self.enqueue((kind, key, value, then, size))
        self.pending += 1

    def _settle(self, ops: Sequence[Op], outcomes: Sequence[Any]) -> None:
        """Runs on the event loop: settle a whole batch in one callback, in queue order."""
        self.pending -= len(ops)
        for op, outcome in zip(ops, outcomes, strict=True):
            fut = op[3]
            if not isinstance(fut, asyncio.Future):
                try:
                    fut(outcome)
                except Exception:  # one caller's bug must not leave the batch's others unsettled
                    log.exception("state write callback failed")
                continue
            if fut.done():  # the caller gave up (cancelled); the write happened anyway
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    def stop(self) -> asyncio.Future[None]:
        """Refuse new ops, let the thread commit what is queued, then exit."""
        if not self.closing:
            self.closing = True
            self._queue.put(None)
        return self._stopped

    def join(self) -> None:
        self._thread.join()

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug here must not leave futures hanging silently
            log.critical("state writer died", exc_info=True)
            raise
        finally:
            self._call_loop(self._set_stopped)

    def _set_stopped(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    def _serve(self) -> None:
        get = self._queue.get
        while True:
            try:
                first = get(timeout=0 if self._trim_backlog else IDLE_TICK_S)
            except queue.Empty:
                self._housekeep()
                continue
            if first is None:
                return
            batch, stop = self._gather(first)
            self._process(batch)
            if stop:
                return

    def _gather(self, first: Op) -> tuple[list[Op], bool]:
        q = self._queue
        batch = [first]
        size = first[4]
        deadline = time.monotonic() + self._window
        while len(batch) < MAX_BATCH_OPS and size < MAX_BATCH_BYTES:
            try:
                op = q.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    op = q.get(timeout=remaining)
                except queue.Empty:
                    break
            if op is None:
                return batch, True
            batch.append(op)
            size += op[4]
        return batch, False

    def _process(self, batch: list[Op]) -> None:
        outcomes = self._commit_growing(batch)
        self._call_loop(self._settle, batch, outcomes)

    def _housekeep(self) -> None:
        if not self._retention.due(self.ledger, self._clock()):
            self._trim_backlog = False
            return
        try:
            self._commit([])
        except Exception:
            self._trim_backlog = False  # don't spin on a failing trim; next write retries
            log.exception("journal retention commit failed")

    def _commit_growing(self, ops: list[Op]) -> list[Any]:
        """Commit `ops`; on MapFull grow the map and retry. If the map is at its cap or
        the batch fails otherwise, bisect: halves that fit commit, in order, and the op
        that cannot fails alone, after O(log n) extra commits rather than n fsyncs."""
        failure: Exception | None = None  # stays None when the map is full at its cap
        while True:
            try:
                outcomes = self._commit(ops)
            except lmdb.MapFullError:
                if self._grow():
                    continue
                break
            except Exception as exc:
                failure = exc
                break
            if self._full and ops:
                self._full = False
                log.info("state writes fit again")
            return outcomes
        if len(ops) > 1:
            mid = len(ops) // 2
            return self._commit_growing(ops[:mid]) + self._commit_growing(ops[mid:])
        self.errors += 1
        if failure is None:
            return [self._full_error()]
        log.error("state write failed (%s op)", _KIND_NAMES[ops[0][0]], exc_info=failure)
        err = StateError(f"state write failed: {failure!r}")
        err.__cause__ = failure
        return [err]

    def _commit(self, ops: list[Op]) -> list[Any]:
        env = self._env
        ledger = self.ledger.copy()
        # buffers=True: retention reads old entries as views into the map, no copies.
        txn = env.lmdb.begin(write=True, buffers=True)
        try:
            outcomes = self._apply(txn, ops, ledger)
            more = trim(txn, env.journal, ledger, self._clock(), self._retention)
            if ledger != self.ledger:
                txn.put(LEDGER_KEY, ledger.pack(), db=env.meta)
            started = time.perf_counter()
            txn.commit()
        except BaseException:
            try:
                txn.abort()
            except lmdb.Error:  # a failed commit has already freed the txn
                pass
            raise
        self.last_commit_ms = (time.perf_counter() - started) * 1e3
        self.ledger = ledger
        self._trim_backlog = more
        self.commits += 1
        self.writes += len(ops)
        return outcomes

    def _apply(self, txn: lmdb.Transaction[memoryview], ops: list[Op], ledger: Ledger) -> list[Any]:
        env = self._env
        kv, journal = env.kv, env.journal
        outcomes: list[Any] = []
        done = outcomes.append
        for kind, key, value, _fut, _size in ops:
            if kind == APPEND:
                ts_ns, topic, header, body = value
                raw = encode_entry(ts_ns, topic, header, body)
                # append=True is LMDB's fast path for keys at the tail; it returns False
                # (it does not raise) if the key is not above the last one.
                if not txn.put(_pack_seq(key), raw, append=True, db=journal):
                    raise StateError(f"journal seq {key} is not above the stored head")
                ledger.record_append(key, ts_ns, len(raw))
                done(key)
            elif kind == PUT:
                txn.put(key, value, db=kv)
                done(None)
            else:
                done(txn.delete(key, db=kv))
        return outcomes

    def _grow(self) -> bool:
        current = self._env.lmdb.info()["map_size"]
        if current >= self._max_map_size:
            return False
        new = min(current * 2, self._max_map_size)
        self._env.resize(new)
        log.info("state map grown from %d to %d MiB", current // MIB, new // MIB)
        return True

    def _full_error(self) -> StateFullError:
        size_mb = self._env.lmdb.info()["map_size"] // MIB
        if not self._full:
            self._full = True
            log.error("state map full at %d MiB; writes fail until space is freed", size_mb)
        return StateFullError(
            f"state is full: the LMDB map is at {size_mb} MiB, the limit set by "
            f"state.max_map_size_mb = {self._max_map_size // MIB}; raise it or delete data"
        )

    def _call_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed without closing the State first
            log.warning("event loop closed; %s not delivered", getattr(fn, "__name__", fn))
