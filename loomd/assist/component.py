"""The `assist` component: owns conversations, from words to actions.

`assist.converse` (an `AssistRequest`, request/reply) -> hassil over home-assistant-intents
with the home's names (fuzzy repair after STT errors) -> actions through the action broker
(`caps.invoke`, as agents call) -> a reply from the response templates; when no sentence
matches, the router with the broker's capabilities as tools. A capability or device that
needs confirmation is asked back and runs only on a "yes" in the same conversation. Every
turn is published as `assist.turn`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.assist.conversation import Conversation
from loomd.assist.local import NOT_UNDERSTOOD, local_turn, outcome
from loomd.assist.rescore import rescore_match, wants_rescore
from loomd.assist.settings import AssistSettings
from loomd.assist.timers import Timers
from loomd.bus.acl import CALLER
from loomd.bus.envelope import Event, QoS
from loomd.component import Command, Component, StatusBlock
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    CapsList,
    ChatMessage,
    ErrorCode,
    HomeSnapshot,
    IntentInfo,
    IntentVia,
    Role,
    Topic,
    Vocabulary,
)
from loomd.metrics import Family

if TYPE_CHECKING:
    from loomd.assist.matcher import Matcher
    from loomd.assist.responses import Responses

__all__ = ["AssistComponent", "AssistStatus"]

YES = re.compile(r"^(yes|yeah|yep|sure|ok|okay|do it|go ahead|confirm|please do)\b", re.I)
NO = re.compile(r"^(no|nope|don't|do not|cancel|stop|never ?mind|forget it|abort)\b", re.I)
RECORDED = 50  # turns kept in the flight recorder (LMDB)


@dataclass(frozen=True)
class AssistStatus(StatusBlock):
    language: str
    devices: int
    areas: int
    sentences_from_capabilities: int
    turns: int
    local: int
    llm: int
    not_understood: int
    confirms_pending: int
    timers: int


class AssistComponent(Component[AssistSettings]):
    requires = ("hassil", "home_assistant_intents", "rapidfuzz", "jinja2")
    extra = "assist"
    apt = "loomd-assist"
    summary = "conversations: local intents (hassil) first, then the model with tools"

    matcher: Matcher
    responses: Responses

    async def start(self) -> None:
        from loomd.assist.responses import Responses

        self.home = HomeSnapshot()
        self.caps: list[dict[str, Any]] = []
        self.convs: dict[str, Conversation] = {}
        self._rescore_errors: set[str] = set()  # each reason said once as an error event
        self.timers = Timers(self)
        self.counts = {"turns": 0, "local": 0, "llm": 0, "none": 0}
        self._seq = itertools.count(int(time.time() * 1000))
        self._key: Any = None
        # Sentences and responses for languages other than `[assist] language`, built when a
        # request first asks for one (a voice site's `[voice] language`); dropped on rebuild
        self._languages: dict[str, tuple[Matcher, Responses]] = {}
        await self._rebuild()
        self.responses = Responses(self.matcher.responses)
        self.spawn(self._serve, "converse", restart=True)
        self.spawn(self._serve_vocabulary, "vocabulary", restart=True)
        self.spawn(self._refresh, "refresh", restart=True)
        self.spawn(self.timers.follow_stop, "stop", restart=True)

    # -- the catalogue: home + capabilities -> a matcher -----------------------------------------
    def _sentence_files(self) -> list[Path]:
        d = self.settings.sentences_dir
        folder = (
            Path(d)
            if d
            else (self.ctx.config_path.parent / "sentences.d" if self.ctx.config_path else None)
        )
        if folder is None or not folder.is_dir():
            return []
        return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])

    async def _fetch(self) -> None:
        try:
            ev = await self.ctx.bus.request(Topic.HOME_REGISTRY, None, timeout=1.0)
            self.home = HomeSnapshot.from_payload(ev.payload)
        except RequestTimeout:
            pass  # no home component: no devices
        try:
            ev = await self.ctx.bus.request(Topic.CAPS_LIST, None, timeout=1.0)
            listed = CapsList.from_payload(ev.payload).caps
            self.caps = [dataclasses.asdict(c) for c in listed]
        except RequestTimeout:
            self.caps = []

    async def _rebuild(self) -> None:
        await self._fetch()
        files = self._sentence_files()
        key = (
            [dataclasses.replace(d, state="", attributes={}) for d in self.home.devices],
            self.home.areas,
            [
                (c["name"], c.get("sentences"), c.get("schema"))
                for c in self.caps
                if c.get("sentences")
            ],
            [(str(p), p.stat().st_mtime) for p in files],
        )
        if key == self._key:
            return
        s = self.settings
        self._files = files

        try:
            self.matcher = await asyncio.to_thread(self._build, s.language)
        except LoomdError as exc:
            if not hasattr(self, "matcher"):
                raise
            self.ctx.error(
                ErrorCode.ASSIST_SENTENCES, f"assist: {exc}; keeping the previous sentences"
            )
            return
        self._key = key
        self._languages.clear()
        vocab = Vocabulary(tuple(self.matcher.vocabulary()), s.language)
        await self.ctx.bus.publish(Topic.ASSIST_VOCABULARY, vocab.to_payload(), wait=False)

    def _build(self, language: str) -> Matcher:
        from loomd.assist.matcher import Matcher

        s = self.settings
        m = Matcher(language, self.home, self.caps, self._files, threshold=s.fuzzy_threshold,
                    area=s.area)  # fmt: skip
        m.match("turn on the light")  # hassil builds its indexes on the first match
        return m

    async def _language(self, language: str) -> tuple[Matcher, Responses]:
        """The sentences and responses of `language` ("" = `[assist] language`). Raises
        LoomdError if home-assistant-intents has none for it."""
        if not language or language == self.settings.language:
            return self.matcher, self.responses
        if language not in self._languages:
            from loomd.assist.responses import Responses

            m = await asyncio.to_thread(self._build, language)
            self._languages[language] = (m, Responses(m.responses))
        return self._languages[language]

    async def _refresh(self) -> None:
        """Rebuild when the home or the capability catalogue says it changed; every
        `refresh_s` too, for what announces nothing (sentence files)."""
        poke = asyncio.Event()

        async def follow(topic: str) -> None:
            async with self.ctx.bus.subscribe(topic, QoS.REALTIME) as sub:
                await sub.ready()
                poke.set()  # it may have changed before we listened
                async for _ev in sub:
                    poke.set()

        for topic in (Topic.HOME_CHANGED, Topic.CAPS_CHANGED):
            self.spawn(functools.partial(follow, topic), f"follow {topic}", restart=True)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.refresh_s):
                    await poke.wait()
            poke.clear()
            await self._rebuild()

    async def _serve_vocabulary(self) -> None:
        async with self.ctx.bus.subscribe(Topic.ASSIST_VOCABULARY, QoS.RELIABLE) as sub:
            async for req in sub:
                if req.reply_to:
                    vocab = Vocabulary(tuple(self.matcher.vocabulary()), self.settings.language)
                    await self.ctx.bus.reply(req, vocab.to_payload(), wait=False)

    # -- serving -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        asks = self.ctx.receive(
            AssistRequest, code=ErrorCode.ASSIST_BAD_REQUEST, qos=QoS.RELIABLE,
            answer=lambda exc, ev: AssistTurn("", error=str(exc)),
        )  # fmt: skip
        async for ask, req in asks:
            self.spawn(lambda a=ask, r=req: self._answer(a, r), "turn", critical=False)  # type: ignore[misc]

    async def _answer(self, ask: AssistRequest, req: Event) -> None:
        CALLER.set(req.caller)  # the turn acts for whoever asked (this task's own context)
        turn = await self.converse(ask)
        if req.reply_to:
            await self.ctx.bus.reply(req, turn.to_payload(), wait=False)

    async def converse(self, ask: AssistRequest) -> AssistTurn:
        began = time.monotonic_ns()
        origin = ask.speech_end_ns or began
        timings: dict[str, float] = {}

        def mark(name: str) -> None:
            timings[name] = round((time.monotonic_ns() - origin) / 1e6, 1)

        conv = self._conversation(ask.conversation_id)
        try:
            turn = await self._turn(ask, conv, mark)
        except Exception as exc:  # a bug in a handler: the turn fails, the component lives
            self.log.exception("assist: turn failed")
            turn = AssistTurn(ask.text, reply="Sorry, something went wrong", error=str(exc))
        mark("total")
        timings.update(turn.timings)
        turn = dataclasses.replace(
            turn,
            timings=timings,
            conversation_id=ask.conversation_id,
            site=ask.site,
            utterance_id=ask.utterance_id,
            continue_conversation=turn.continue_conversation or conv.pending is not None,
        )
        if self.settings.memory_turns and ask.conversation_id:
            conv.messages.append(ChatMessage(Role.USER, ask.text))
            if turn.reply:
                conv.messages.append(ChatMessage(Role.ASSISTANT, turn.reply))
        self.counts["turns"] += 1
        self.counts[turn.intent.via] = self.counts.get(turn.intent.via, 0) + 1
        await self.ctx.bus.publish(Topic.ASSIST_TURN, turn.to_payload(), wait=False)
        await self._record(turn)
        return turn

    async def _record(self, turn: AssistTurn) -> None:
        """The flight recorder: the last `RECORDED` turns (`assist.last`, the status
        page), each with its wall-clock time."""
        try:
            kv = self.ctx.state.kv("assist")
            await kv.put(f"turn/{next(self._seq):016d}", {"at": time.time(), **turn.to_payload()})
            keys = kv.keys("turn/")
            for old in keys[: max(0, len(keys) - RECORDED)]:
                await kv.delete(old)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.RECORDER, f"assist: flight recorder write failed: {exc}")

    def _conversation(self, cid: str) -> Conversation:
        now = time.monotonic()
        for k, c in list(self.convs.items()):
            if now - c.last > self.settings.idle_timeout_s:
                del self.convs[k]
        conv = self.convs.get(cid)
        if conv is None or not cid:
            conv = Conversation(deque(maxlen=max(1, 2 * self.settings.memory_turns)), now)
            if cid:
                self.convs[cid] = conv
        conv.last = now
        return conv

    # -- one turn ------------------------------------------------------------------------------
    async def _turn(self, ask: AssistRequest, conv: Conversation, mark: Any) -> AssistTurn:
        text = ask.text.strip()
        if not text:
            return AssistTurn(text, reply="")
        pending, conv.pending = conv.pending, None
        if pending is not None and time.monotonic() < pending.until:
            if YES.match(text):
                done = await self._run(pending.actions)
                mark("action_done")
                intent = IntentInfo("confirm", {}, IntentVia.LOCAL.value)
                return AssistTurn(text, intent, tuple(done), outcome(done, pending.reply))
            if NO.match(text):
                return AssistTurn(
                    text,
                    IntentInfo("HassNevermind", {}, IntentVia.LOCAL.value),
                    reply="Okay, I won't.",
                )
        try:
            matcher, responses = await self._language(ask.language)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.ASSIST_SENTENCES, f"assist: {exc}")
            return AssistTurn(text, reply=self.responses.refusal("no_intent", NOT_UNDERSTOOD))
        match = await asyncio.to_thread(matcher.match, text)
        mark("matched")
        s = self.settings
        if s.rescore and ask.utterance_id and wants_rescore(text, match):
            better, _ = await rescore_match(self.ctx, matcher, text, ask.utterance_id,
                                            s.rescore_candidates, s.rescore_margin,
                                            self._rescore_errors)  # fmt: skip
            mark("rescored")
            match = better or match
        if match is not None and not match.unknown:
            turn = await local_turn(self, match, ask, conv, responses)
            if turn.actions:
                mark("action_done")
            return turn
        if match is not None:  # a command for a device or area the home does not have
            word = next(iter(match.unknown.values()))
            key = "no_area" if "area" in match.unknown else "no_entity"
            reply = responses.refusal(
                key, f"Sorry, I am not aware of any device called {word}", entity=word, area=word
            )
            return AssistTurn(
                text,
                IntentInfo(match.intent, dict(match.unknown), IntentVia.NONE.value),
                reply=reply,
            )
        if self.settings.llm:
            from loomd.assist.tools import llm_turn

            return await llm_turn(self, ask, conv, mark)
        return AssistTurn(text, reply=responses.refusal("no_intent", NOT_UNDERSTOOD))

    async def _run(self, plans: Iterable[ActionRecord]) -> list[ActionRecord]:
        from loomd.assist.tools import run_actions

        return await run_actions(self, plans)

    # -- operator ---------------------------------------------------------------------------------
    def status(self) -> AssistStatus | None:
        if not hasattr(self, "matcher"):
            return None
        return AssistStatus(
            self.settings.language,
            len(self.home.devices),
            len(self.home.areas),
            sum(len(c.get("sentences") or ()) for c in self.caps),
            self.counts["turns"],
            self.counts.get("local", 0),
            self.counts.get("llm", 0),
            self.counts.get("none", 0),
            sum(1 for c in self.convs.values() if c.pending is not None),
            len(self.timers),
        )

    def metrics(self) -> Iterable[Family]:
        yield Family(
            "loomd_assist_turns_total",
            "counter",
            "Turns by how they were understood.",
            [({"via": k}, float(v)) for k, v in self.counts.items() if k != "turns"],
        )

    def commands(self) -> Mapping[str, Command]:
        return {
            "converse": Command(
                self._cmd_converse,
                "one turn: text -> intent -> actions -> reply",
                ("text", "conversation"),
            ),
            "vocabulary": Command(self._cmd_vocabulary, "the names given to speech to text"),
            "last": Command(self._cmd_last, "the last N turns (the flight recorder)", ("n",)),
        }

    async def _cmd_converse(self, text: Any, conversation: Any = "") -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            raise LoomdError("assist: give the text")
        turn = await self.converse(AssistRequest(text, conversation_id=str(conversation or "")))
        return turn.to_payload()

    async def _cmd_last(self, n: Any = 5) -> dict[str, Any]:
        items = self.ctx.state.kv("assist").items("turn/")
        return {"turns": [v for _, v in items[-max(1, int(n)) :]]}

    async def _cmd_vocabulary(self) -> dict[str, Any]:
        return {"words": self.matcher.vocabulary()}
