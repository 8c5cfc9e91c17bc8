"""`Client.request`'s replies (loomd.sdk.client)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from loomd.bus.envelope import Event, QoS
from loomd.errors import LoomdError, RequestTimeout
from loomd.sdk.subscription import Subscription

if TYPE_CHECKING:
    from loomd.sdk.client import Client

__all__ = ["Replies"]


class Replies:
    """`Client.request`'s replies: one reliable subscription to a `thread.<random>.reply` of
    this client's, opened on the first request and kept, replies matched to their request by
    correlation id. A subscription per request cost a subscribe and an unsubscribe, and their
    control replies, on top of every request: p50 1.05-1.43 ms against 0.68-0.80 with this
    (docs/design/fast-hops-calls.md, "hops3"). A reply nobody waits for is dropped."""

    EARLY = 256  # replies kept that beat their waiter's registration (then the oldest go)

    def __init__(self, client: Client) -> None:
        self.client = client
        self.topic = f"thread.{os.urandom(16).hex()}.reply"
        self.sub: Subscription | None = None
        self._waiting: dict[bytes, asyncio.Future[Event]] = {}
        self._early: dict[bytes, Event] = {}

    def open(self) -> None:
        """Subscribe, unless subscribed: again after the subscription ended (it was
        refused, or closed); an evicted one the client resubscribes by itself."""
        if self.sub is not None and not self.sub.closed:
            return
        sub = self.sub = self.client.subscribe(self.topic, QoS.RELIABLE)
        task = self.client.loop.create_task(self._run(sub), name="loomd.sdk.replies")
        self.client._tasks.add(task)
        task.add_done_callback(self.client._tasks.discard)

    async def _run(self, sub: Subscription) -> None:
        why: BaseException = LoomdError("the bus closed while waiting for a reply")
        try:
            async for ev in sub:
                cid = ev.correlation_id
                if cid is None:
                    continue
                fut = self._waiting.pop(cid, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(ev)
                    continue
                self._early[cid] = ev
                while len(self._early) > self.EARLY:
                    self._early.pop(next(iter(self._early)))
        except LoomdError as exc:  # the subscription was refused: say why to whoever waits
            why = exc
        finally:
            # a newer subscription (same topic) takes over the waiting requests' replies
            if self.sub is sub or self.sub is None:
                self.sub = None
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(why)
                self._waiting.clear()

    async def wait(self, eid: bytes, topic: str, timeout: float) -> Event:
        reply = self._early.pop(eid, None)
        if reply is not None:
            return reply
        fut: asyncio.Future[Event] = self.client.loop.create_future()
        self._waiting[eid] = fut
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no reply on {topic} within {timeout:g} s") from None
        finally:
            self._waiting.pop(eid, None)
