"""`ctx.receive(X)`: the typed subscription every component uses. On a real broker (real
LMDB journal) through `LocalBus`: a malformed payload is reported once (a `loomd.error`
naming the topic and the sender), a request among them is answered with the error, and
the next good message still arrives."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import uvloop

from loomd.bus.broker import Broker
from loomd.bus.local import LocalBus
from loomd.bus.settings import BusSettings
from loomd.component import Context, Delivery, Inbox, Services
from loomd.config import Section
from loomd.errors import LoomdError
from loomd.messages import ErrorCode, ErrorEvent, MqttAck, SayRequest, Topic
from loomd.state import State
from tests.conftest import eventually


def run(root: Path, body: Any) -> None:
    async def main() -> None:
        async with State(root / "db") as state:
            services = Services(root / "bus.sock")
            services.broker = Broker(BusSettings(), state.journal)
            ctx: Context[Section] = Context(
                "voice", Section(), services=services, state_dir=root, runtime_dir=root,
                cache_dir=root, device_id="box", models_dir=root / "models",
            )  # fmt: skip
            async with asyncio.timeout(10):
                await body(ctx, LocalBus(services.broker, "sender"))

    uvloop.run(main())


def test_a_malformed_payload_is_reported_and_the_next_good_one_arrives(tmp_path: Path) -> None:
    async def body(ctx: Context[Section], other: LocalBus) -> None:
        bad: list[str] = []
        inbox = ctx.receive(
            SayRequest, code=ErrorCode.BAD_SAY, on_bad=lambda ev, e: bad.append(ev.topic)
        )
        async with other.subscribe(Topic.ERROR, "realtime") as errors, inbox:
            await errors.ready()
            await inbox.ready()
            await other.publish(Topic.VOICE_SAY, {"txt": "typo"})
            await other.publish(Topic.VOICE_SAY, "not a map")
            await SayRequest("hello").publish(other)
            got = [d async for d in _take(inbox, 1)]
            assert got[0].msg == SayRequest("hello") and got[0].event.sender == "sender"
            assert isinstance(got[0], Delivery)
            reports = [ErrorEvent.from_event(await errors.get(2.0)) for _ in range(2)]
        assert inbox.rejected == 2 and bad == ["voice.say", "voice.say"]
        assert [r.code for r in reports] == [ErrorCode.BAD_SAY, ErrorCode.BAD_SAY]
        assert reports[0].component == "voice"
        assert reports[0].message.startswith("voice: bad voice.say payload from sender: ")
        assert "unknown fields ['txt']" in reports[0].message
        assert "expected a map, got str" in reports[1].message
        assert reports[0].details == {"topic": "voice.say", "sender": "sender"}

    run(tmp_path, body)


def test_a_malformed_request_is_answered_with_the_error(tmp_path: Path) -> None:
    async def body(ctx: Context[Section], other: LocalBus) -> None:
        inbox = ctx.receive(SayRequest, answer=lambda exc, ev: MqttAck(False, str(exc)))
        async with inbox:
            await inbox.ready()
            good = asyncio.create_task(_first(inbox))
            reply = await other.request(Topic.VOICE_SAY, {"nope": 1}, timeout=3.0)
            assert MqttAck.from_payload(reply.payload) == MqttAck(
                False, "SayRequest: unknown fields ['nope']"
            )
            await SayRequest("next").publish(other)
            assert (await good).text == "next"
        assert inbox.rejected == 1

    run(tmp_path, body)


def test_iterating_unopened_subscribes_and_a_cancel_leaves_nothing_behind(tmp_path: Path) -> None:
    async def body(ctx: Context[Section], other: LocalBus) -> None:
        broker = ctx.services.broker
        assert broker is not None
        inbox = ctx.receive(SayRequest, pattern="voice.#")
        got: list[str] = []

        async def loop() -> None:
            async for msg, _ev in inbox:
                got.append(msg.text)

        task = asyncio.create_task(loop())
        await eventually(lambda: broker.listeners("voice.say"), 5, "the inbox subscribed")
        await SayRequest("one").publish(other)
        await eventually(lambda: got, 5, "the message")
        task.cancel()  # how a component's loop ends: its task is cancelled at stop
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert got == ["one"] and await other.listeners("voice.say") == 0

    run(tmp_path, body)


def test_a_class_without_a_topic_needs_a_pattern(tmp_path: Path) -> None:
    async def body(ctx: Context[Section], other: LocalBus) -> None:
        try:
            Inbox(other, MqttAck, lambda ev, e: None)
        except LoomdError as exc:
            assert "MqttAck has no topic of its own" in str(exc)
        else:
            raise AssertionError("an Inbox without a topic was made")

    run(tmp_path, body)


async def _take(inbox: Inbox[Any], n: int) -> Any:
    async for d in inbox:
        yield d
        n -= 1
        if n == 0:
            return


async def _first(inbox: Inbox[SayRequest]) -> SayRequest:
    async for msg, _ev in inbox:
        return msg
    raise AssertionError("the inbox closed")
