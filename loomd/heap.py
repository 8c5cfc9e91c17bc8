"""The process's heap and the cyclic collector: what a long-running loomd process (the
daemon, an agent, an SDK client that asks for it) does once its start is over."""

from __future__ import annotations

import gc

__all__ = ["freeze_heap"]

_frozen = False


def freeze_heap() -> None:
    """Once per process: collect, then `gc.freeze()` what is left (modules, settings, the
    start's objects: ~50k in the daemon). Each full collection walked all of it: 40-140 ms
    pauses of the daemon's loop under a publish flood (`bench/hostile.py`
    stalled_reliable); in an SDK caller 1.5-3.5 ms young collections and 26-83 ms full ones,
    the p99 of a 0.3 ms one-hop call (docs/design/fast-hops-calls.md, "hops3"). Frozen
    objects are never collected: what the start left as cyclic garbage is collected first;
    garbage made later is collected as usual. Not by default in a library:
    `gc.get_referrers`/`get_objects` no longer see frozen objects (hypothesis'
    `register_random` check, in a test process, then warns)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
