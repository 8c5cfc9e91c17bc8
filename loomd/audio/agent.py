"""A voice turn after the utterance is cut: speech to text, the transcript on
`voice.transcript`, then the default agent hand-off: the assist (`assist.converse`: intents,
actions) when it runs, else the router as a chat turn (`llm.chat`, priority "voice"), the
reply spoken sentence by sentence while it streams. Each turn lands in the flight recorder."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loomd.audio.addressed import LEAD_STRICTNESS, check_wake, not_addressed
from loomd.audio.recorder import TurnClock, TurnRecord
from loomd.audio.worker import WorkerError
from loomd.bus.acl import Manifest
from loomd.bus.identity import Identity, IdentityKind
from loomd.errors import LoomdError
from loomd.messages import (
    AssistRequest,
    AssistTurn,
    ChatChunk,
    ChatDone,
    ChatMessage,
    ChatRequest,
    ErrorCode,
    EventType,
    IgnoredWhy,
    Topic,
    Transcript,
    TurnIgnored,
    Vocabulary,
    VoiceState,
)

if TYPE_CHECKING:
    from loomd.audio.board import Board
    from loomd.audio.frames import Frame
    from loomd.audio.recorder import FlightRecorder
    from loomd.audio.settings import VoiceSettings
    from loomd.audio.speaker import Speaker
    from loomd.audio.stt import SttWorker
    from loomd.audio.vad import Segment
    from loomd.audio.wakecheck import PhraseHeard
    from loomd.component import Context

__all__ = ["VOICE_MANIFEST", "Agent", "voice_identity"]

_STAGE_CODES = {"TTS": ErrorCode.TTS_FAILED, "wake word": ErrorCode.WAKE_FAILED}

Spawn = Callable[[Callable[[], Awaitable[None]], str], "asyncio.Task[None]"]

# What a spoken turn may do on its own: ask the assist, and call what any caller may call
# without a rule (capabilities not marked sensitive). A sensitive one (a lock, an alarm)
# needs an `[[acl]]` rule naming the voice identity with `sensitive = true`.
VOICE_MANIFEST = Manifest(publish=(Topic.ASSIST_CONVERSE.value,), call=("*",))


def voice_identity(source: str, site: str) -> Identity:
    """Who a spoken turn acts for, from where its audio came: `voice:local` for the
    board's own microphone (or a WAV fed as one), `voice:<site>` for audio a satellite or
    a peer publishes on `audio.in.<site>`. Never the daemon: whoever can speak to the
    board is not root."""
    return Identity(IdentityKind.VOICE, site if source == "bus" else "local")


class Agent:
    def __init__(
        self,
        ctx: Context[VoiceSettings],
        *,
        stt: SttWorker,
        speaker: Speaker,
        board: Board,
        recorder: FlightRecorder,
        counts: collections.Counter[str],
        spawn: Spawn,
        identity: Identity | None = None,
    ) -> None:
        self.ctx, self.stt, self.speaker, self.board = ctx, stt, speaker, board
        self.identity = identity or voice_identity("mic", ctx.settings.site)
        self._turn_bus: Any = None
        self.recorder, self.counts, self._spawn = recorder, counts, spawn
        self.stt_hist: list[float] = []
        self._vocabulary = ""  # the assist's names, for whisper's initial prompt
        self._assist_seen = False
        self._probed = -1e9
        self.current: TurnRecord | None = None  # the turn running now
        self.checking: asyncio.Task[PhraseHeard] | None = None  # the wake check

    @property
    def turn_bus(self) -> Any:
        """The handle a turn asks the assist through: the turn's own identity (the assist
        acts for it and shows the model only the tools it may call), not `daemon:voice`."""
        if self._turn_bus is None:
            from loomd.bus.local import LocalBus

            bus = self.ctx.bus
            self._turn_bus = (
                LocalBus(bus.broker, bus.name, self.identity, VOICE_MANIFEST)
                if isinstance(bus, LocalBus)
                else bus
            )
        return self._turn_bus

    def stage_failed(self, code: ErrorCode, error: str) -> None:
        """A stage outside the turn failed (the wake word's worker died): reported, and
        the running turn, if any, is marked failed with it."""
        self.ctx.error(code, f"voice: {error}")
        rec = self.current
        if rec is not None and self.board.busy():
            rec.fail(error)
            self.counts["failed"] += 1

    def check_wake(self, pcm: bytes, word: str) -> None:
        """Start the wake check on the wake segment `pcm` (loomd.audio.wakecheck) while the
        command is being said; the turn waits for its verdict before it acts."""
        self.cancel_check()
        # a failure (the STT worker died: it restarts) is the turn's to report
        phrase = self.ctx.settings.wake.phrase(word)
        self.checking = asyncio.create_task(self.stt.hear_phrase(pcm, phrase))

    def cancel_check(self) -> None:
        if self.checking is not None:
            self.checking.cancel()
            self.checking = None

    def verdict(self) -> tuple[bool, PhraseHeard | None] | None:
        """The wake check's verdict on a barge-in candidate once it is in, by the playback
        rule (`[voice.wake] bargein_margin`): (accepted, what it heard), (False, None) if
        the check failed; None while it runs (or none runs)."""
        task = self.checking
        if task is None or not task.done() or task.cancelled():
            return None
        if task.exception() is not None:
            return False, None
        heard = task.result()
        margin, floor = self.ctx.settings.wake.bargein_check()
        return heard.accepts(margin, floor), heard

    def confirmed(self) -> None:
        """The check confirmed a barge-in by the playback rule: the turn needs no other."""
        self.checking = None

    async def wait_verdict(self, timeout: float) -> tuple[bool, PhraseHeard | None]:
        """Wait for the wake check's verdict (at most `timeout` s: then it failed)."""
        task = self.checking
        if task is None:
            return False, None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({task})
        except TimeoutError:
            return False, None
        return self.verdict() or (False, None)

    def refused(self) -> PhraseHeard | None:
        """The wake check's verdict when it is in and refuses the wake, else None."""
        task = self.checking
        if task is None or not task.done() or task.cancelled():
            return None
        if task.exception() is not None:  # the turn reports it
            return None
        heard = task.result()
        return heard if self._rejects(heard) else None

    def _rejects(self, heard: PhraseHeard) -> bool:
        """Does the wake check's rule (`[voice.wake]`, as it is now) refuse this verdict?"""
        rules = self.ctx.settings.wake.check
        return rules is not None and not heard.accepts(rules.margin, rules.floor)

    def start(self, cut: Segment, rec: TurnRecord, frame: Frame, checked: bool = False) -> None:
        """Run the turn for an utterance the segmenter cut at `frame`; with `checked`, it
        acts only if the wake check started at the wake (`check_wake`) lets it."""
        # The segmenter decided `cut.end - cut.speech_end` of stream time after speech ended.
        speech_end = frame.at - (cut.end - cut.speech_end)
        clock = TurnClock(speech_end)
        rec.timings["vad_end"] = clock.ms()
        rec.end_reason = cut.reason
        self.counts["utterances"] += 1
        self.current = rec
        check, self.checking = (self.checking if checked else None), None
        self.board.turn = self._spawn(
            lambda: self._turn(cut, rec, clock, check), f"turn-{rec.utterance_id}"
        )

    def refuse(self, rec: TurnRecord, heard: PhraseHeard) -> asyncio.Task[None]:
        """A wake the check refused while the command was still being said: the turn ends
        now, quietly."""
        self.checking = None
        self.current = rec

        async def quietly() -> None:
            try:
                await self._refuse(rec, heard)
            finally:
                await self.recorder.record(rec)
                if self.current is rec:
                    self.current = None

        return self._spawn(quietly, f"refused-{rec.utterance_id}")

    async def _refuse(self, rec: TurnRecord, heard: PhraseHeard) -> None:
        phrase, rules = self.ctx.settings.wake.phrase(rec.wake), self.ctx.settings.wake.check
        limits = "" if rules is None else f"floor {rules.floor}, margin {rules.margin}"
        await self._ignore(rec, IgnoredWhy.NOT_THE_WAKE_WORD,
                           f"heard {heard.text!r}; {phrase!r} scored "
                           f"{heard.free - heard.open_gap:.2f}, {heard.open_gap} under it "
                           f"({limits})", heard.text)  # fmt: skip

    def _failed(self, rec: TurnRecord, code: ErrorCode, error: str) -> None:
        rec.fail(error)
        self.counts["failed"] += 1
        self.ctx.error(code, f"voice: utterance {rec.utterance_id}: {rec.error}")

    async def _ignore(self, rec: TurnRecord, why: IgnoredWhy, detail: str, heard: str = "") -> None:
        """End the turn quietly (no reply, no sound), saying why on `voice.ignored`."""
        rec.outcome, rec.error = str(why), detail
        self.counts["ignored"] += 1
        self.ctx.log.info("voice: turn %s ignored: %s", rec.utterance_id, detail)
        await TurnIgnored(rec.utterance_id, why, detail, heard, self.ctx.settings.site,
                          rec.wake, rec.wake_score).publish(self.ctx.bus)  # fmt: skip

    async def _turn(
        self,
        cut: Segment,
        rec: TurnRecord,
        clock: TurnClock,
        check: asyncio.Task[PhraseHeard] | None,
    ) -> None:
        s = self.ctx.settings
        try:
            await self.board.set(VoiceState.THINKING, rec.utterance_id)
            if cut.reason == "no_speech":
                await self._ignore(rec, IgnoredWhy.NO_SPEECH, "nobody spoke after the wake word")
                return
            if s.agent == "assist" and not self._assist_seen:
                await self._probe_assist()
            if check is not None:  # started at the wake: usually in by now
                try:
                    heard = await check
                except LoomdError as exc:  # the STT worker died during it: it restarts
                    self._failed(rec, ErrorCode.STT_FAILED,
                                 f"STT failed: {type(exc).__name__}: {exc}")  # fmt: skip
                    return
                rec.timings["wake_check"] = clock.ms()
                if self._rejects(heard):
                    await self._refuse(rec, heard)
                    return
            rec.timings["stt_start"] = clock.ms()
            try:
                extra = self._vocabulary if s.stt.assist_vocabulary else ""
                res = await self.stt.transcribe(cut.pcm, extra, rec.utterance_id)
            except Exception as exc:
                self._failed(rec, ErrorCode.STT_FAILED,
                             f"STT failed: {type(exc).__name__}: {exc}")  # fmt: skip
                return
            rec.timings["stt_end"] = clock.ms()
            self.stt_hist.append(res.ms)
            del self.stt_hist[:-200]
            text = res.text
            if cut.lead:  # the utterance opens with the wake phrase: cut it off
                text = self._after_phrase(text, rec.wake)
            if not text:
                why = "nothing was said after the wake word"
                await self._ignore(rec, IgnoredWhy.NO_SPEECH, why, res.text)
                return
            if why := not_addressed(text):
                await self._ignore(rec, IgnoredWhy.NOT_ADDRESSED, why, text)
                return
            rec.transcript = text
            tr = Transcript(text, rec.utterance_id, s.site, confidence=1.0,
                            timings=dict(rec.timings))  # fmt: skip
            await self.ctx.bus.publish(Topic.VOICE_TRANSCRIPT, tr.to_payload(), wait=False)
            try:
                if s.agent == "assist" and self._assist_seen:
                    await self._assist(rec, clock)
                elif s.agent != "none":
                    await self._converse(rec, clock)
            except WorkerError as exc:  # the TTS worker failed mid-reply
                self._failed(rec, _STAGE_CODES.get(exc.stage, ErrorCode.TTS_FAILED),
                             f"{exc.stage} failed: {type(exc).__name__}: {exc}")  # fmt: skip
        except asyncio.CancelledError:
            rec.outcome = "interrupted"
            raise
        finally:
            if rec.outcome == "open":
                rec.outcome = "ok"
            await self.recorder.record(rec)
            if self.current is rec:
                self.current = None
            if self.board.turn is asyncio.current_task():
                await self.board.set(VoiceState.IDLE, rec.utterance_id)

    def _after_phrase(self, text: str, word: str) -> str:
        """The command in the transcript of an utterance that opens with the wake phrase
        (a command said straight on from it): what follows the phrase as whisper wrote it
        ("Hey Jarvis, what time is it?" -> "What time is it?"); all of it when the phrase
        is not found at its start."""
        heard = check_wake(text, self.ctx.settings.wake.phrase(word), LEAD_STRICTNESS)
        return heard.command if heard.ok else text

    # -- the assist ---------------------------------------------------------------------------
    async def follow_vocabulary(self) -> None:
        """The assist's vocabulary (device and area names) becomes whisper's prompt; hearing
        from the assist at all tells that it runs."""
        async with self.ctx.bus.subscribe(Topic.ASSIST_VOCABULARY, "reliable") as sub:
            await sub.ready()
            try:
                ev = await self.ctx.bus.request(Topic.ASSIST_VOCABULARY, None, timeout=3.0)
                self._take_vocabulary(ev.payload)
            except LoomdError:
                pass  # no assist yet: its first vocabulary event tells when it starts
            async for ev in sub:
                if ev.payload is not None:
                    self._take_vocabulary(ev.payload)

    async def _probe_assist(self) -> None:
        """Is the assist there (it may have started after this component)? Asked at most
        every 30 s; meanwhile the router answers directly."""
        now = time.monotonic()
        if now - self._probed < 30.0:
            return
        self._probed = now
        try:
            ev = await self.ctx.bus.request(Topic.ASSIST_VOCABULARY, None, timeout=1.0)
            self._take_vocabulary(ev.payload)
        except LoomdError:
            self.ctx.log.info("voice: no assist answers; the router answers this site directly")

    def _take_vocabulary(self, payload: Any) -> None:
        try:
            self._vocabulary = Vocabulary.from_payload(payload).prompt
            self._assist_seen = True
        except LoomdError as exc:
            self.ctx.error(ErrorCode.BAD_VOCABULARY, f"voice: {exc}")

    async def _assist(self, rec: TurnRecord, clock: TurnClock) -> None:
        """Hand the transcript to the assist; speak its reply; listen again if it asks."""
        from loomd.audio.tts import SentenceSplitter

        s = self.ctx.settings
        ask = AssistRequest(rec.transcript, f"voice-{s.site}", s.site, s.language,
                            speech_end_ns=int(clock.speech_end * 1e9),
                            utterance_id=rec.utterance_id)  # fmt: skip
        try:
            ev = await self.turn_bus.request(Topic.ASSIST_CONVERSE, ask.to_payload(),
                                             timeout=s.reply_timeout_s)  # fmt: skip
            turn = AssistTurn.from_payload(ev.payload)
        except LoomdError as exc:
            self._failed(rec, ErrorCode.REPLY_FAILED, f"no answer from the assist: {exc}")
            return
        rec.intent = turn.intent.to_payload()
        rec.actions = [a.to_payload() for a in turn.actions]
        rec.route, rec.reply = turn.route, turn.reply
        for key in ("matched", "rescored", "action_done", "llm_first"):
            if key in turn.timings:
                rec.timings[key] = turn.timings[key]
        rec.timings["reply"] = clock.ms()
        if turn.error:
            rec.error = turn.error
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        split = SentenceSplitter()
        for sentence in [*split.feed(turn.reply), *split.flush()]:
            sentences.put_nowait(sentence)
        sentences.put_nowait(None)
        await self.speaker.speak_queue(sentences, rec, clock)
        if turn.continue_conversation and s.followup_s > 0:
            self.board.follow_up = True
        else:
            self.board.asked(turn.reply, s.followup_s)

    # -- the router ---------------------------------------------------------------------------
    async def _converse(self, rec: TurnRecord, clock: TurnClock) -> None:
        """The default voice agent: ask the router, speak the reply while it streams."""
        from loomd.audio.tts import SentenceSplitter

        s = self.ctx.settings
        reply_to = f"voice.reply.{rec.utterance_id}"
        req = ChatRequest(
            (ChatMessage("system", s.system_prompt), ChatMessage("user", rec.transcript)),
            priority="voice",
            stream=True,
            max_tokens=96,
            agent="voice",
        )
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self.speaker.speak_queue(sentences, rec, clock))
        split = SentenceSplitter()
        text = ""
        try:
            async with self.ctx.bus.subscribe(reply_to) as sub:
                await sub.ready()
                await self.ctx.bus.publish(
                    Topic.LLM_CHAT, req.to_payload(), reply_to=reply_to, wait=False
                )
                # The limit is on silence (before the first chunk and between chunks): a
                # router that is gone fails the turn, a slow one streaming a long reply
                # does not.
                deadline = time.monotonic() + s.reply_timeout_s
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LoomdError(f"no reply from the router within {s.reply_timeout_s} s")
                    ev = await sub.get(timeout=left)
                    deadline = time.monotonic() + s.reply_timeout_s
                    if ev.type == EventType.LLM_CHUNK:
                        piece = ChatChunk.from_event(ev).text
                        if "first_token" not in rec.timings:
                            rec.timings["first_token"] = clock.ms()
                        text += piece
                        for sentence in split.feed(piece):
                            rec.timings.setdefault("first_sentence", clock.ms())
                            sentences.put_nowait(sentence)
                    elif ev.type == EventType.LLM_DONE:
                        done = ChatDone.from_payload(ev.payload)
                        if done.error:
                            raise LoomdError(f"the router said: {done.error}")
                        if not text and done.text:  # a router that did not stream
                            text = done.text
                            split.feed(done.text)
                        break
            for sentence in split.flush():
                rec.timings.setdefault("first_sentence", clock.ms())
                sentences.put_nowait(sentence)
            rec.reply = text.strip()
            self.board.asked(rec.reply, s.followup_s)
        except (LoomdError, TimeoutError) as exc:
            self._failed(rec, ErrorCode.REPLY_FAILED, str(exc) or "no reply from the router")
        finally:
            sentences.put_nowait(None)
            try:
                await speaker
            except asyncio.CancelledError:
                speaker.cancel()
                raise
