"""BusServer in process, with a raw DEALER in a thread: the order of events is forced."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from loomd.bus import wire
from loomd.bus.broker import Broker
from loomd.bus.server import BusServer, Session
from loomd.bus.settings import BusSettings


def test_input_during_a_slow_control_op_is_not_lost(tmp_path: Path) -> None:
    """A control op answered from a task sends outside the pump. libzmq's fd is edge
    triggered and any socket operation may consume its edge: a message that arrived while
    the op ran (here a ping, in the flood test a consumer's acks) used to stay unread until
    something else woke the daemon, which stalled a held-back reliable flow for good."""
    endpoint = f"ipc://{tmp_path}/bus.sock"
    started, sent = threading.Event(), threading.Event()
    replies: list[dict[str, Any]] = []

    async def control(session: Session | None, msg: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.1)  # the pump that read this op is over, nothing else pending
        started.set()
        # The loop stays blocked (on purpose) until the client has sent its ping, and a
        # moment more for the ipc hop, so the ping is queued on the socket when the reply
        # goes out.
        assert sent.wait(5.0), "the client never sent its ping"
        time.sleep(0.05)  # noqa: ASYNC251
        return {}

    def client() -> None:
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send(wire.pack_control({"op": "slow", "rid": 1}))
            if not started.wait(5.0):
                return
            sock.send(wire.pack_control({"op": "ping", "rid": 2}))
            sent.set()
            while len(replies) < 2 and sock.poll(2000):
                replies.append(wire.unpack_control(sock.recv()))

    async def main() -> None:
        broker = Broker(BusSettings())
        async with BusServer(broker, [endpoint], control=control):
            await asyncio.to_thread(client)

    asyncio.run(main())
    assert sorted(r["rid"] for r in replies) == [1, 2]
    assert all(r["ok"] for r in replies)


def test_replies_to_a_client_whose_pipe_is_full_are_held_not_lost(tmp_path: Path) -> None:
    """A client that asks faster than it reads fills its pipe; its replies wait, in order,
    until it reads (they were dropped, and its requests hung: bench/hostile.py acl_denied)."""
    endpoint = f"ipc://{tmp_path}/bus.sock"
    n, blob = 400, b"x" * 32768  # 12.8 MB of replies: far more than the pipe and the kernel hold
    answered, read_now = threading.Event(), threading.Event()
    calls = 0
    replies: list[dict[str, Any]] = []

    async def control(session: Session | None, msg: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == n:
            answered.set()
        return {"blob": blob}

    def client() -> None:
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.connect(endpoint)
            for rid in range(1, n + 1):
                sock.send(wire.pack_control({"op": "big", "rid": rid}))
            if not read_now.wait(30):
                return
            while len(replies) < n and sock.poll(5000):
                replies.append(wire.unpack_control(sock.recv()))

    async def main() -> bool:
        broker = Broker(BusSettings())
        async with BusServer(broker, [endpoint], control=control) as server:
            reader = asyncio.create_task(asyncio.to_thread(client))
            assert await asyncio.to_thread(answered.wait, 30), "the ops never all ran"
            async with asyncio.timeout(10):
                while not any(s.ctl_backlog for s in server.sessions.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # the last replies go out after the op returns
            read_now.set()
            await reader
            return all(s.alive for s in server.sessions.values())

    alive = asyncio.run(main())
    assert [r["rid"] for r in replies] == list(range(1, n + 1))
    assert all(r["ok"] and r["blob"] == blob for r in replies)
    assert alive
