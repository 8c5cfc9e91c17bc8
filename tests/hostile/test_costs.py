"""Hostile gaps of issue 19 that cost others work or room: matching cost, state total,
a stalled reliable subscriber. Each against a real daemon, with the witness checking."""

from __future__ import annotations

import random

import pytest

from bench.hostile_cost import STATE_TOML, _subscribe_raw, literal_patterns, wildcard_patterns
from loomd.bus.topics import match_cost
from loomd.errors import RemoteError
from loomd.sdk import connect
from tests.conftest import LoomdProcess
from tests.hostile.conftest import arun, witness

pytestmark = pytest.mark.hostile


def test_matching_cost_is_bounded_per_publish(daemon: LoomdProcess) -> None:
    """Four clients of 256 patterns of 24-31 wildcards with four `#` each (the reported
    attack took 3.6 s of everyone's time per client for 50 events), plus one client of
    literal-laden patterns, which its matching budget cuts short; then 50 events on
    32-segment topics. All are delivered, and the witness is answered within 100 ms."""

    async def main() -> None:
        rng = random.Random(19)
        async with witness(daemon) as w:
            socks = []
            for _ in range(4):
                s, ok = await _subscribe_raw(daemon.endpoint, wildcard_patterns(rng, 256))
                socks.append(s)
                assert ok == 256  # collapsed to a few cheap paths: all held
            costly = literal_patterns(rng, 256)
            s, ok = await _subscribe_raw(daemon.endpoint, costly)
            socks.append(s)
            held = fits = 0
            for p in costly:  # what bus.max_match_cost (16384) lets one client hold
                if held + match_cost(p) <= 16384:
                    held += match_cost(p)
                    fits += 1
            assert ok == fits < 256  # the rest refused with `quota`
            async with connect(daemon.endpoint) as bus:
                probe = await bus.subscribe("#.x.#", "realtime").ready()
                for i in range(50):
                    await bus.publish(".".join(["x"] * 31 + [str(i)]), i, qos="realtime")
                got = [(await probe.get(10)).payload for _ in range(50)]
                assert got == list(range(50))
                st = (await bus.status())["status"]["components"]["bus"]["status"]
            assert st["refused"]["match_cost"] == 256 - ok
            await w.check()
            for s in socks:
                s.close()

    arun(main)


def test_state_fill_leaves_the_journal_its_room(daemon: LoomdProcess) -> None:
    """Quotas that would let the key-value data have the whole map (kv_max_mb over the
    map's limit, as unlimited namespaces did): filling namespace after namespace, first
    with large values, then with the small ones that fit between, is refused with `quota`
    before the journal is starved; durable publishes go on being acknowledged."""
    daemon.write_config(STATE_TOML)
    daemon.restart()

    async def main() -> None:
        async with witness(daemon) as w:
            refused: list[str] = []
            for size, namespaces in ((512 << 10, 12), (16 << 10, 4), (1 << 10, 2)):
                for ns in range(namespaces):
                    for i in range(20):
                        try:
                            await w.bus.call(
                                "state.put", args=[f"k{i}", "x" * size], ns=f"f{size}.{ns}"
                            )
                        except RemoteError as exc:
                            assert exc.code == "quota", exc
                            refused.append(str(exc))
            assert refused and "kept for the durable journal" in refused[-1]
            await w.publish(50)
            st = await w.check()
            assert st["state"]["quota_refused"] == len(refused)
            assert st["drops"].get("journal", 0) == 0

    arun(main)
