"""The fresh queue: bounded by count and by age, drops counted."""

from __future__ import annotations

import asyncio

from loomd.audio.frames import Frame, FreshQueue


def test_count_bound_drops_the_oldest() -> None:
    q = FreshQueue(max_frames=3, max_age_s=100, clock=lambda: 0.0)
    for i in range(5):
        q.put(Frame(b"x", i * 0.02, 0.0))
    assert len(q) == 3 and q.dropped == 2

    async def first() -> float:
        return (await q.get()).t

    assert asyncio.run(first()) == 0.04


def test_age_bound_gives_fresh_audio() -> None:
    now = [0.0]
    q = FreshQueue(max_frames=1000, max_age_s=0.5, clock=lambda: now[0])
    for i in range(100):  # two seconds of audio arrived while the reader was busy
        q.put(Frame(b"x", i * 0.02, i * 0.02))
    now[0] = 2.0

    async def first() -> Frame:
        return await q.get()

    frame = asyncio.run(first())
    assert frame.at >= 1.5
    assert q.dropped == 75
