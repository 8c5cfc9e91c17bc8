"""The `llm` component: answers `llm.chat` on the bus through the router.

Each request is decided (`decide()` over measured facts), the decision is logged as one
line, published on `loomd.route.decision` and kept in an LMDB ring, then carried out:
tokens stream back on the request's `reply_to` as `ChatChunk`s, then one `ChatDone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

from loomd.bus.envelope import Event
from loomd.component import Command, Component, Inbox
from loomd.config import ResolvedPaths
from loomd.errors import LoomdError
from loomd.messages import (
    ChatChunk,
    ChatDone,
    ChatMessage,
    ChatRequest,
    ErrorCode,
    EventType,
    Policy,
    RouteDecision,
    Topic,
)
from loomd.metrics import Family
from loomd.router.cloud import CloudClient, CloudError, CloudRefused, Ledger, read_key
from loomd.router.decisions import DECISIONS_NS, DecisionRing, explained
from loomd.router.engine import Engine, Job, QueueFull
from loomd.router.facts import cpu_pressure, cpu_temp_c, mem_available_mb, read_gguf_shape
from loomd.router.openai_wire import messages_to_wire
from loomd.router.policy import Decision, Facts, Resolved, Route, decide, resolve
from loomd.router.settings import LlmSettings, model_file
from loomd.router.status import LlmStatus, cloud_line, families
from loomd.router.tools import (
    CALL_TOKENS,
    OutputReader,
    grammar_schema,
    parse_output,
    render,
    validate_call,
)

__all__ = ["DECISIONS_NS", "LlmComponent", "LlmStatus"]
# How often a streaming turn checks that its requester still listens on reply_to.
LISTENER_CHECK_S = 0.1


class LlmComponent(Component[LlmSettings]):
    requires = ("llama_cpp",)
    extra = "llm"
    apt = "loomd-llm"
    summary = "local llama.cpp inference and the policy router (llm.chat)"

    @classmethod
    def check(cls, settings: LlmSettings, paths: ResolvedPaths) -> list[str]:
        """The model file is there and is a GGUF file (its header only), or a cloud is set."""
        path = model_file(settings.model, paths.models_dir)
        cloud = bool(settings.cloud.base_url and settings.cloud.model)
        if path is None:
            return [] if cloud else ["no model configured ([llm] model) and no cloud ([llm.cloud])"]
        try:
            exists = path.exists()
        except PermissionError:
            return [f"cannot look into {path.parent}: permission denied"]
        if not exists and cloud:
            return []  # runs on the cloud alone, and says so in its status
        if not exists:
            return [f"no model at {path}: `loomctl models fetch` (or set [llm] model)"]
        try:
            read_gguf_shape(path)
        except LoomdError as exc:
            return [str(exc)]
        return []

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.engine: Engine | None = None
        self.cloud: CloudClient | None = None
        self.http: Any = None
        self.problem = ""  # why the local model is unusable, if it is
        self.system: dict[str, Any] = {"cpu_temp_c": None, "cpu_pressure": 0.0, "mem_mb": 0.0}
        self.routes: dict[str, int] = {}
        self.inflight: dict[str, Job] = {}
        self.bad_requests = 0
        self.decisions: DecisionRing | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.decisions = DecisionRing(
            self.ctx.state.kv(DECISIONS_NS),
            lambda: self.settings.decisions_kept,
            lambda msg: self.ctx.error(ErrorCode.LLM_LEDGER, msg),
        )
        self._refresh_system()
        path = model_file(s.model, self.ctx.models_dir)
        if path is not None:
            self.engine = Engine(path, s)
            try:
                self.engine.check_fit()
                if s.load_at_start:
                    await self.engine.load()
            except LoomdError as exc:
                self.problem = str(exc)
                self.ctx.error(ErrorCode.LLM_MODEL, f"llm: {exc}")
            self.spawn(self.engine.serve, "engine", restart=True)
            self.spawn(self._idle_unload, "idle-unload", restart=True)
        else:
            self.problem = "no model configured ([llm] model)"
            self.log.warning("llm: %s; only the cloud can answer", self.problem)
        if s.cloud.base_url and s.cloud.model:
            key = read_key(s.cloud)
            if not key:
                self.log.warning(
                    "llm: no cloud key in $CREDENTIALS_DIRECTORY/%s or $%s; sending none",
                    s.cloud.key_name, s.cloud.key_env,
                )  # fmt: skip
            self.cloud = CloudClient(s.cloud, Ledger(self.ctx.state.kv("llm.spend")), key)
            await self.cloud.open()
        chat = self.ctx.receive(
            ChatRequest, code=ErrorCode.LLM_BAD_REQUEST, qos="reliable", on_bad=self._bad_request,
            answer=lambda exc, ev: ChatDone(error=str(exc), decision_id=ev.id.hex()),
        )  # fmt: skip
        stop = self.ctx.bus.subscribe(Topic.VOICE_STOP, "reliable")
        await chat.ready()
        await stop.ready()
        self._subs = [chat, stop]
        self.spawn(lambda: self._serve_chat(chat), "chat", restart=False)
        self.spawn(lambda: self._serve_stop(stop), "voice-stop", restart=False)
        self.spawn(self._watch_system, "facts", restart=True)
        self.spawn(self._offer_chat, "offer-llm.chat", restart=True)
        if s.http_port:
            from loomd.router.http import HttpEndpoint
            from loomd.web.auth import NAMESPACE, HttpGuard, TokenStore

            name = path.stem if path is not None else s.cloud.model
            guard = HttpGuard(
                lambda: TokenStore(self.ctx.state.kv(NAMESPACE)), "openai", s.http_bind,
                s.http_origins, "llm.http_bind",
            )  # fmt: skip
            self.http = HttpEndpoint(self.ctx.bus, s.http_bind, s.http_port, name, guard)
            why = guard.missing_token()
            if why is None:
                await self.http.start()
            else:  # refuse to listen unguarded; start once a token exists
                self.ctx.error(ErrorCode.CONFIG, f"llm http endpoint not listening: {why}")
                self.spawn(self._start_http_with_token, "http-await-token")

    async def _start_http_with_token(self) -> None:
        await self.http.guard.wait_for_token(preload=("uvicorn", "loomd.web.server"))
        await self.http.start()

    async def stop_intake(self) -> None:
        if self.http is not None:
            await self.http.stop()
        for sub in getattr(self, "_subs", []):
            await sub.close()

    def pending(self) -> int:
        return len(self.inflight)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        for job in self.inflight.values():
            job.cancel.set()
        if self.engine is not None:
            await self.engine.close()
        if self.cloud is not None:
            await self.cloud.close()
        if self.decisions is not None:
            await self.decisions.settle()

    # -- background --------------------------------------------------------------------------
    async def _idle_unload(self) -> None:
        assert self.engine is not None
        while True:
            await asyncio.sleep(max(0.05, min(self.settings.idle_unload_s / 4, 30.0)))
            idle = time.monotonic() - self.engine.last_used
            limit = self.settings.idle_unload_s
            if limit and self.engine.loaded and not self.engine.depth() and idle >= limit:
                self.log.info("llm: idle %.0f s, unloading the model", idle)
                await self.engine.unload()

    def _refresh_system(self) -> None:
        self.system = {
            "cpu_temp_c": cpu_temp_c(),
            "cpu_pressure": cpu_pressure(),
            "mem_mb": mem_available_mb(),
        }

    async def _watch_system(self) -> None:
        # sysfs reads can take milliseconds on some boards: off the request path, in a thread
        while True:
            await asyncio.sleep(2.0)
            await asyncio.to_thread(self._refresh_system)

    async def _offer_chat(self) -> None:
        """Offer `llm.chat` to the action broker over the bus, once something takes
        registrations (the agents component may start later, or not at all)."""
        from loomd.agents.sdk import serve_capabilities
        from loomd.router.capability import PROVIDER, chat_broker

        broker = chat_broker(self.ctx.bus)
        while True:  # nothing announces the agents' start: look every half second
            if await self._listening(Topic.CAPS_REGISTER):
                break
            await asyncio.sleep(0.5)
        async with serve_capabilities(self.ctx.bus, PROVIDER, broker):
            await asyncio.Event().wait()  # served until the component stops

    async def _serve_stop(self, sub: Any) -> None:
        async for _ev in sub:
            for job in list(self.inflight.values()):
                if job.priority == "voice":
                    job.cancel.set()

    async def _serve_chat(self, chat: Inbox[ChatRequest]) -> None:
        async for req, ev in chat:
            turn = functools.partial(self._turn, req, ev)
            self.spawn(turn, f"turn-{ev.id.hex()[:8]}", restart=False, critical=False)

    def _bad_request(self, ev: Event, exc: LoomdError) -> None:
        self.bad_requests += 1

    # -- facts and decisions -----------------------------------------------------------------
    def facts(self) -> Facts:
        e = self.engine
        c = self.settings.cloud
        return Facts(
            local_available=e is not None and not self.problem,
            local_loaded=e is not None and e.loaded,
            local_tps=e.tps.value if e else 0.0,
            local_ttft_ms=e.ttft_ms.value if e else 0.0,
            local_confidence=e.confidence.value if e else 0.0,
            local_gpu=e.gpu if e else False,
            load_ms=e.load_ms if e else 0.0,
            queue_depth=e.depth() if e else 0,
            cloud_configured=self.cloud is not None,
            cloud_state=self.cloud.breaker.state if self.cloud else "none",
            spend_today=self.cloud.ledger.today() if self.cloud else 0.0,
            spend_month=self.cloud.ledger.month() if self.cloud else 0.0,
            price_in_per_1k=c.price_in_per_1k,
            price_out_per_1k=c.price_out_per_1k,
            daily_cap=c.daily_cap,
            monthly_cap=c.monthly_cap,
            cpu_temp_c=self.system["cpu_temp_c"],
            cpu_pressure=self.system["cpu_pressure"],
            mem_available_mb=self.system["mem_mb"],
        )

    def _decide(self, req: ChatRequest) -> tuple[Decision, Resolved, Facts]:
        policy = resolve(req.policy, self.settings.policy, req.agent)
        facts = self.facts()
        return decide(req, policy, facts), policy, facts

    async def _record(
        self, did: str, req: ChatRequest, d: Decision, policy: Resolved, facts: Facts
    ) -> None:
        self.routes[d.route] = self.routes.get(d.route, 0) + 1
        record = RouteDecision(
            id=did, at=time.time(), agent=req.agent, priority=req.priority,
            **explained(d, policy, facts),
        )  # fmt: skip
        self.log.info(
            "route %s: %s (rule %s: %s; est %.0f ms, cost %.4f, confidence %.2f, privacy %s)",
            did, d.route, d.rule, d.reason, d.est_latency_ms, d.est_cost, d.confidence,
            policy.privacy,
        )  # fmt: skip
        assert self.decisions is not None
        self.decisions.add(did, record.to_payload())
        await record.publish(self.ctx.bus, wait=False)

    # -- a chat turn -------------------------------------------------------------------------
    async def _turn(self, req: ChatRequest, ev: Event) -> None:
        did = ev.id.hex()
        decision, policy, facts = self._decide(req)
        await self._record(did, req, decision, policy, facts)
        if decision.route == Route.DENY:
            await self._done(ev, ChatDone(route="deny", error=decision.reason, decision_id=did))
            return
        if decision.route == Route.LOCAL:
            await self._done(ev, await self._local(ev, req, did))
        elif decision.route == Route.CLOUD:
            await self._done(ev, await self._cloud(ev, req, did, policy, fallback=True))
        else:  # hybrid: a local answer now, the cloud's refinement after, on one thread
            quick = await self._local(ev, req, did, phase="quick")
            await self._done(ev, quick)
            if quick.error != "cancelled":
                await self._done(ev, await self._cloud(ev, req, did, policy, phase="refine"))

    async def _cloud(
        self,
        ev: Event,
        req: ChatRequest,
        did: str,
        policy: Resolved,
        *,
        phase: str = "final",
        fallback: bool = False,
    ) -> ChatDone:
        if self.cloud is None:
            return ChatDone(
                route="cloud", phase=phase, error="no cloud configured", decision_id=did
            )
        index = 0

        async def send(text: str) -> None:
            nonlocal index
            if req.stream and ev.reply_to:
                await self.ctx.bus.reply(
                    ev, ChatChunk(text, index).to_payload(), type=EventType.LLM_CHUNK
                )
            index += 1

        try:
            r = await self.cloud.chat(
                messages_to_wire(req.messages),
                policy,
                max_tokens=min(req.max_tokens, self.settings.max_tokens),
                temperature=req.temperature,
                json_schema=req.json_schema,
                tools=req.tools,
                tool_choice=req.tool_choice,
                on_token=send,
            )
        except CloudRefused as exc:
            self.ctx.error(ErrorCode.LLM_CLOUD_REFUSED, f"llm: {exc}")
            return ChatDone(route="cloud", phase=phase, error=str(exc), decision_id=did)
        except CloudError as exc:
            self.ctx.error(ErrorCode.LLM_CLOUD, f"llm: {exc}", kind=exc.kind)
            if fallback and index == 0 and self.engine is not None and not self.problem:
                self.log.warning("llm: %s; answering locally instead", exc)
                return await self._local(ev, req, did)
            return ChatDone(route="cloud", phase=phase, error=str(exc), decision_id=did)
        for call in r.tool_calls:  # the cloud's calls meet the same check as the local ones
            why = validate_call(call, req.tools)
            if why:
                self.ctx.error(ErrorCode.LLM_BAD_TOOL_CALL, f"llm: cloud: {why}")
                return ChatDone(route="cloud", phase=phase, error=why, decision_id=did)
        return ChatDone(r.text, "cloud", phase, did, r.completion_tokens, tool_calls=r.tool_calls)

    async def _local(self, ev: Event, req: ChatRequest, did: str, phase: str = "final") -> ChatDone:
        if self.engine is None:
            return ChatDone(route="local", phase=phase, error="no local model", decision_id=did)
        schema = grammar_schema(req.tools, req.tool_choice)
        limit = min(req.max_tokens, self.settings.max_tokens)
        job = Job(
            messages=render(req.messages, req.tools, req.tool_choice),
            # a call gets room to finish; an answer still stops at `limit` (below)
            max_tokens=limit if schema is None else max(limit, CALL_TOKENS),
            temperature=req.temperature,
            json_schema=req.json_schema,
            priority=req.priority,
            grammar_schema=schema,
        )
        # a tool turn's tokens are JSON: only a plain answer's text is streamed
        reader = OutputReader() if schema is not None else None
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            self.ctx.error(ErrorCode.LLM_QUEUE_FULL, f"llm: {exc}")
            return ChatDone(route="local", phase=phase, error=str(exc), decision_id=did)
        self.inflight[did] = job
        watch = asyncio.ensure_future(self._watch_listener(ev, job)) if ev.reply_to else None
        index = 0
        answer_tokens = 0
        try:
            async for text in job.stream():
                if (
                    ev.reply_to
                    and not job.cancel.is_set()
                    and not await self._listening(ev.reply_to)
                ):
                    self.log.info("llm: requester of %s left; cancelling", did)
                    job.cancel.set()  # checked per token: the model is free a token later
                piece = text
                if reader is not None:
                    piece = reader.feed(text)
                    answer_tokens += reader.kind == "answer"
                    if answer_tokens >= limit:
                        job.enough.set()
                if not piece:
                    continue
                if req.stream and ev.reply_to and not job.cancel.is_set():
                    await self.ctx.bus.reply(
                        ev, ChatChunk(piece, index).to_payload(), type=EventType.LLM_CHUNK
                    )
                index += 1
            r = job.result
            if r.cancelled:  # the contract: text is empty when error is set
                return ChatDone("", "local", phase, did, r.tokens, "cancelled")
            if reader is None:
                return ChatDone(r.text, "local", phase, did, r.tokens)
            out = parse_output(r.text, req.tools, cut=r.finish == "length")
            # (an answer cut at `limit` parses as the answer said so far)
            if out.error:
                self.ctx.error(ErrorCode.LLM_BAD_TOOL_CALL, f"llm: {out.error}")
                return ChatDone(route="local", phase=phase, error=out.error, decision_id=did)
            calls = (out.call,) if out.call is not None else ()
            return ChatDone(out.answer, "local", phase, did, r.tokens, tool_calls=calls)
        except LoomdError as exc:
            return ChatDone(route="local", phase=phase, error=str(exc), decision_id=did)
        finally:
            self.inflight.pop(did, None)
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    async def _listening(self, topic: str) -> bool:
        return await self.ctx.bus.listeners(topic) > 0

    async def _watch_listener(self, ev: Event, job: Job) -> None:
        """Cancel the job once nobody listens on reply_to any more (the requester left),
        also while it waits in the queue. A streaming requester subscribes before it
        publishes (loomd/messages/); during generation each token checks as well."""
        topic = ev.reply_to
        while topic and not job.cancel.is_set():
            await asyncio.sleep(LISTENER_CHECK_S)
            if not await self._listening(topic):
                self.log.info("llm: requester of %s left; cancelling", ev.id.hex())
                job.cancel.set()

    async def _done(self, ev: Event, done: ChatDone) -> None:
        if not ev.reply_to:
            return
        with contextlib.suppress(LoomdError):
            await self.ctx.bus.reply(ev, done.to_payload(), type=EventType.LLM_DONE)

    async def reload(self, new: LlmSettings) -> list[str]:
        """Policy defaults, prices, caps, timeouts and limits apply to the next request."""
        self.ctx.settings = new
        if self.engine is not None:
            self.engine.settings = new
        if self.cloud is not None:
            self.cloud.settings = new.cloud
            self.cloud.breaker.limit = new.cloud.breaker_failures
            self.cloud.breaker.open_s = new.cloud.breaker_open_s
        return []

    # -- the operator's view -----------------------------------------------------------------
    def status(self) -> LlmStatus:
        st = self.engine.stats() if self.engine else {}
        return LlmStatus(
            model=str(self.settings.model),
            loaded=bool(st.get("loaded")),
            problem=self.problem,
            tps=float(st.get("tps", 0.0)),
            ttft_ms=float(st.get("ttft_ms", 0.0)),
            confidence=float(st.get("confidence", 0.0)),
            queue=int(st.get("queue", 0)),
            generations=int(st.get("generations", 0)),
            cancelled=int(st.get("cancelled", 0)),
            decisions=dict(self.routes),
            cloud=cloud_line(self.cloud),
            gpu_layers=int(st.get("gpu_layers", 0)),
            http=self.http.describe() if self.http is not None else "",
        )

    def metrics(self) -> Iterable[Family]:
        st = self.engine.stats() if self.engine else {}
        return families(self.routes, st, self.cloud, self.bad_requests)

    def commands(self) -> Mapping[str, Command]:
        return {
            "explain": Command(self._explain, "the facts, policy and rule of a decision", ("id",)),
            "test": Command(
                self._test,
                "dry run: the decision for a prompt (nothing is generated)",
                ("prompt", "privacy", "max_tokens", "allow_cloud"),
            ),
            "recent": Command(self._recent, "the latest decisions", ("n",)),
            "stats": Command(self._stats, "the local engine's measured figures"),
            "load": Command(self._load, "load the model now"),
            "unload": Command(self._unload, "unload the model now"),
        }

    def _ring(self) -> DecisionRing:
        if self.decisions is None:
            raise LoomdError("the llm component has not started")
        return self.decisions

    async def _explain(self, id: Any) -> dict[str, Any]:
        return {"decision": await self._ring().get(str(id))}

    async def _test(
        self,
        prompt: Any,
        privacy: Any = None,
        max_tokens: Any = 256,
        allow_cloud: Any = None,
    ) -> dict[str, Any]:
        req = ChatRequest(
            (ChatMessage("user", str(prompt)),),
            policy=Policy(privacy=privacy, allow_cloud=allow_cloud),
            max_tokens=int(max_tokens),
        )
        return explained(*self._decide(req))

    async def _recent(self, n: Any = 10) -> dict[str, Any]:
        return {"decisions": await self._ring().recent(int(n))}

    async def _stats(self) -> dict[str, Any]:
        return {"engine": self.engine.stats() if self.engine else {}, "problem": self.problem}

    async def _load(self) -> dict[str, Any]:
        if self.engine is None:
            raise LoomdError("no model configured ([llm] model)")
        await self.engine.load()
        self.problem = ""
        return {"load_ms": round(self.engine.load_ms, 1)}

    async def _unload(self) -> dict[str, Any]:
        if self.engine is not None:
            await self.engine.unload()
        return {}
