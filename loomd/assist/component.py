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
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.assist.conversation import Conversation, Pending
from loomd.assist.settings import AssistSettings
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
    Domain,
    ErrorCode,
    HomeDevice,
    HomeSnapshot,
    IntentInfo,
    IntentVia,
    Role,
    SayRequest,
    Topic,
    Vocabulary,
)
from loomd.metrics import Family

if TYPE_CHECKING:
    from loomd.assist.matcher import Match, Matcher
    from loomd.assist.responses import Responses

__all__ = ["AssistComponent", "AssistStatus"]

YES = re.compile(r"^(yes|yeah|yep|sure|ok|okay|do it|go ahead|confirm|please do)\b", re.I)
NO = re.compile(r"^(no|nope|don't|do not|cancel|stop|never ?mind|forget it|abort)\b", re.I)
NOT_UNDERSTOOD = "Sorry, I couldn't understand that"


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


@dataclass
class Timer:
    id: int
    seconds: float
    ends: float  # time.monotonic()
    site: str
    name: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class AssistComponent(Component[AssistSettings]):
    name = "assist"
    Settings = AssistSettings
    requires = ("hassil", "home_assistant_intents", "rapidfuzz", "jinja2")
    extra = "assist"
    summary = "conversations: local intents (hassil) first, then the model with tools"

    matcher: Matcher
    responses: Responses

    async def start(self) -> None:
        from loomd.assist.responses import Responses

        self.home = HomeSnapshot()
        self.caps: list[dict[str, Any]] = []
        self.convs: dict[str, Conversation] = {}
        self.timers: dict[int, Timer] = {}
        self._timer_ids = 0
        self._ringing: set[asyncio.Task[None]] = set()
        self.counts = {"turns": 0, "local": 0, "llm": 0, "none": 0}
        self._key: Any = None
        await self._rebuild()
        self.responses = Responses(self.matcher.responses)
        self.spawn(self._serve, "converse", restart=True)
        self.spawn(self._serve_vocabulary, "vocabulary", restart=True)
        self.spawn(self._refresh, "refresh", restart=True)
        self.spawn(self._follow_stop, "stop", restart=True)

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
        from loomd.assist.matcher import Matcher

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

        def build() -> Matcher:
            m = Matcher(
                s.language, self.home, self.caps, files, threshold=s.fuzzy_threshold, area=s.area
            )
            m.match("turn on the light")  # hassil builds its indexes on the first match
            return m

        try:
            self.matcher = await asyncio.to_thread(build)
        except LoomdError as exc:
            if not hasattr(self, "matcher"):
                raise
            self.ctx.error(
                ErrorCode.ASSIST_SENTENCES, f"assist: {exc}; keeping the previous sentences"
            )
            return
        self._key = key
        vocab = Vocabulary(tuple(self.matcher.vocabulary()), s.language)
        await self.ctx.bus.publish(Topic.ASSIST_VOCABULARY, vocab.to_payload(), wait=False)

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
                await asyncio.wait_for(poke.wait(), self.settings.refresh_s)
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
        async with self.ctx.bus.subscribe(Topic.ASSIST_CONVERSE, QoS.RELIABLE) as sub:
            async for req in sub:
                self.spawn(lambda r=req: self._answer(r), "turn", critical=False)  # type: ignore[misc]

    async def _answer(self, req: Event) -> None:
        CALLER.set(req.caller)  # the turn acts for whoever asked (this task's own context)
        try:
            ask = AssistRequest.from_payload(req.payload)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.ASSIST_BAD_REQUEST, f"assist: {exc}")
            if req.reply_to:
                turn = AssistTurn("", error=str(exc))
                await self.ctx.bus.reply(req, turn.to_payload(), wait=False)
            return
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
        return turn

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
                return AssistTurn(text, intent, tuple(done), self._outcome(done, pending.reply))
            if NO.match(text):
                return AssistTurn(
                    text,
                    IntentInfo("HassNevermind", {}, IntentVia.LOCAL.value),
                    reply="Okay, I won't.",
                )
        match = await asyncio.to_thread(self.matcher.match, text)
        mark("matched")
        if match is not None and not match.unknown:
            turn = await self._handle(match, ask, conv)
            if turn.actions:
                mark("action_done")
            return turn
        if match is not None:  # a command for a device or area the home does not have
            word = next(iter(match.unknown.values()))
            key = "no_area" if "area" in match.unknown else "no_entity"
            reply = self.responses.refusal(
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
        return AssistTurn(text, reply=self.responses.refusal("no_intent", NOT_UNDERSTOOD))

    async def _handle(self, m: Match, ask: AssistRequest, conv: Conversation) -> AssistTurn:
        intent = IntentInfo(m.intent, _plain(m.slots), IntentVia.LOCAL.value)
        text = ask.text
        r = self.responses
        spoken = {**m.texts}
        if "name" in m.slots:
            spoken["name"] = m.texts.get("name", "")

        def reply_for(devs: list[HomeDevice]) -> str:
            state = _state_view(devs[0]) if devs else None
            return r.intent(
                m.intent,
                m.response,
                "Done",
                slots=spoken,
                state=state,
                query={"matched": [], "unmatched": []},
            )

        if m.intent == "HassNevermind":
            conv.pending = None
            return AssistTurn(text, intent, reply="")
        if m.intent == "HassGetCurrentTime":
            import datetime

            now = datetime.datetime.now()
            fallback = now.strftime("%H:%M")
            return AssistTurn(
                text, intent, reply=r.intent(m.intent, "default", fallback, slots={"time": now})
            )
        if m.intent in (
            "HassStartTimer",
            "HassCancelTimer",
            "HassTimerStatus",
            "HassCancelAllTimers",
        ):
            return AssistTurn(text, intent, reply=self._timer(m, ask, spoken))
        if m.intent.startswith("cap:"):
            return await self._capability(m, intent, text, conv)
        from loomd.assist.intents import ACTING, plan_actions, targets

        if m.intent in ACTING:
            plans, devs = plan_actions(m, self.home.devices)
        elif m.intent == "HassGetState":
            devs = targets(m, self.home.devices)
            if not devs:
                return AssistTurn(text, intent, reply=r.refusal("no_entity", "I don't know"))
            got = await self._run([ActionRecord("home.get_state", {"device": devs[0].id})])
            value = got[0].result if isinstance(got[0].result, dict) else {}
            st = _state_view(devs[0], str(value.get("state") or ""))
            want = m.slots.get("state")
            matched = [st] if want is not None and str(want).lower() == st.state.lower() else []
            reply = r.intent(
                m.intent,
                m.response,
                st.state_with_unit,
                slots=spoken,
                state=st,
                query={"matched": matched, "unmatched": [] if matched else [st]},
            )
            return AssistTurn(text, intent, tuple(got), reply)
        else:
            return AssistTurn(text, intent, reply=r.refusal("no_intent", NOT_UNDERSTOOD))
        if not plans:
            area = m.texts.get("area", "")
            dom = str(m.slots.get("domain") or "device")
            reply = (
                r.refusal(
                    "no_domain_in_area",
                    f"Sorry, I am not aware of any {dom} in the {area} area",
                    domain=dom,
                    area=area,
                )
                if area
                else r.refusal("no_domain", f"Sorry, I am not aware of any {dom}", domain=dom)
            )
            return AssistTurn(text, intent, reply=reply)
        reply = reply_for(devs)
        if self._needs_confirm(plans):
            conv.pending = Pending(plans, reply, time.monotonic() + self.settings.confirm_timeout_s)
            asked = [dataclasses.replace(a, code="confirm") for a in plans]
            question = self._question(m, devs)
            return AssistTurn(text, intent, tuple(asked), question, continue_conversation=True)
        done = await self._run(plans)
        return AssistTurn(text, intent, tuple(done), self._outcome(done, reply))

    def _question(self, m: Match, devs: list[HomeDevice]) -> str:
        verb = {"HassTurnOff": "Turn off", "HassTurnOn": "Turn on"}.get(m.intent, "Do that for")
        if devs and devs[0].domain == Domain.LOCK:
            verb = "Unlock" if m.intent == "HassTurnOff" else "Lock"
        elif devs and devs[0].domain == Domain.COVER:
            verb = "Close" if m.intent == "HassTurnOff" else "Open"
        names = " and ".join(f"the {d.name}" for d in devs[:3])
        return f"{verb} {names}?"

    def _needs_confirm(self, plans: Iterable[ActionRecord]) -> bool:
        flagged = {c["name"] for c in self.caps if c.get("confirm")}
        devices = {d.id: d for d in self.home.devices}
        for a in plans:
            if a.capability.split("@")[0] in flagged:
                return True
            d = devices.get(str(a.params.get("device", "")))
            action = a.capability.rsplit(".", 1)[-1]
            if d is not None and ("*" in d.confirm or action in d.confirm):
                return True
        return False

    async def _capability(
        self, m: Match, intent: IntentInfo, text: str, conv: Conversation
    ) -> AssistTurn:
        name = m.intent.removeprefix("cap:")
        versions = [c for c in self.caps if c["name"] == name and c.get("sentences")]
        spec = max(versions, key=lambda c: int(c.get("version", 1)), default={})
        if spec:
            name = f"{name}@{spec.get('version', 1)}"  # the version whose sentences matched
        props = (spec.get("schema") or {}).get("properties") or {}
        params = {
            k: (
                int(v)
                if isinstance(v, float) and (props.get(k) or {}).get("type") == "integer"
                else v
            )
            for k, v in m.slots.items()
            if k in props
        }
        plan = [ActionRecord(name, params)]
        if spec.get("confirm"):
            conv.pending = Pending(plan, "Done", time.monotonic() + self.settings.confirm_timeout_s)
            desc = spec.get("description") or name
            return AssistTurn(
                text,
                intent,
                (dataclasses.replace(plan[0], code="confirm"),),
                f"{desc}?",
                continue_conversation=True,
            )
        done = await self._run(plan)
        value = done[0].result
        said = (
            value
            if isinstance(value, str)
            else (value.get("reply") if isinstance(value, dict) else None)
        )
        return AssistTurn(text, intent, tuple(done), self._outcome(done, str(said or "Done")))

    def _outcome(self, done: list[ActionRecord], reply: str) -> str:
        bad = [a for a in done if a.code != "ok"]
        if not bad:
            return reply
        why = str(bad[0].result or bad[0].code)
        return f"Sorry, that did not work: {why}"

    async def _run(self, plans: Iterable[ActionRecord]) -> list[ActionRecord]:
        from loomd.assist.tools import run_actions

        return await run_actions(self, plans)

    # -- timers -----------------------------------------------------------------------------------
    def _timer(self, m: Match, ask: AssistRequest, spoken: dict[str, Any]) -> str:
        if m.intent == "HassStartTimer":
            secs = (
                float(m.slots.get("hours", 0)) * 3600
                + float(m.slots.get("minutes", 0)) * 60
                + float(m.slots.get("seconds", 0))
            )
            if secs <= 0:
                return "Sorry, how long should the timer run?"
            self._timer_ids += 1
            t = Timer(
                self._timer_ids,
                secs,
                time.monotonic() + secs,
                ask.site or self.settings.site,
                str(m.slots.get("name") or ""),
            )
            t.task = self.spawn(lambda: self._ring(t), f"timer-{t.id}", critical=False)
            self.timers[t.id] = t
            return self.responses.intent(
                m.intent, m.response, f"Timer set for {_span(secs)}", slots=spoken
            )
        if m.intent in ("HassCancelTimer", "HassCancelAllTimers"):
            if not self.timers:
                return self.responses.refusal(
                    "timer_not_found", "Sorry, I couldn't find that timer"
                )
            ids = list(self.timers) if m.intent == "HassCancelAllTimers" else [max(self.timers)]
            for i in ids:
                t = self.timers.pop(i)
                if t.task is not None:
                    t.task.cancel()
            return self.responses.intent(m.intent, "default", "Timer cancelled")
        if not self.timers:
            return "No timers."
        left = min(t.ends for t in self.timers.values()) - time.monotonic()
        n = len(self.timers)
        return f"{n} timer{'s' if n > 1 else ''}; the next one ends in {_span(max(0.0, left))}"

    async def _ring(self, t: Timer) -> None:
        await asyncio.sleep(t.seconds)
        self.timers.pop(t.id, None)
        text = f"Your {_span(t.seconds)} timer is done" + (f": {t.name}" if t.name else "")
        ring = asyncio.current_task()
        assert ring is not None
        self._ringing.add(ring)
        try:
            for _ in range(3):  # until "stop" (voice.stop) or three times
                say = SayRequest(text, "announcement", t.site)
                await self.ctx.bus.publish(Topic.VOICE_SAY, say.to_payload(), wait=False)
                await asyncio.sleep(8.0)
        finally:
            self._ringing.discard(ring)

    async def _follow_stop(self) -> None:
        async with self.ctx.bus.subscribe(Topic.VOICE_STOP, QoS.RELIABLE) as sub:
            async for _ in sub:
                for task in list(self._ringing):
                    task.cancel()

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
        }

    async def _cmd_converse(self, text: Any, conversation: Any = "") -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            raise LoomdError("assist: give the text")
        turn = await self.converse(AssistRequest(text, conversation_id=str(conversation or "")))
        return turn.to_payload()

    async def _cmd_vocabulary(self) -> dict[str, Any]:
        return {"words": self.matcher.vocabulary()}


def _plain(slots: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (int(v) if isinstance(v, float) and v.is_integer() else v)
        for k, v in slots.items()
        if isinstance(v, str | int | float | bool)
    }


def _state_view(d: HomeDevice, state: str = "") -> Any:
    from loomd.assist.responses import StateView

    return StateView(d.name, d.domain.value, state or d.state, d.unit)


def _span(secs: float) -> str:
    secs = round(secs)
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    parts = [
        f"{n} {u}{'s' if n != 1 else ''}"
        for n, u in ((h, "hour"), (m, "minute"), (s, "second"))
        if n
    ]
    return " and ".join(parts) or "0 seconds"
