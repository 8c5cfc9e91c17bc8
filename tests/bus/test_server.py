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
