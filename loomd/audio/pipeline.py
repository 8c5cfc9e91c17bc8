"""The live pipeline: frames -> echo canceller -> front end -> wake word -> VAD -> a turn.

Per frame: the wake word (scored every 80 ms) while idle or speaking; after a wake, the
hand-off asks whether another part takes the turn while the VAD segmenter cuts the
utterance, which the agent then runs (STT, reply). The wake word during playback is a
barge-in candidate: with the wake check on it ducks playback at once, the check runs on its
segment, and only a confirmed wake stops playback (`voice.stop`) and opens the turn; a
refused one brings the volume back (docs/design/voice-bargein.md). A device is realtime:
frames go through a queue bounded by age and count, so a stage that fell behind resumes on
fresh audio."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from loomd.audio.frames import FRAME_MS, Frame, FreshQueue
from loomd.audio.recorder import TurnRecord
from loomd.audio.wakecheck import PRE_S, WakeSegment
from loomd.audio.worker import WorkerError
from loomd.messages import BargeIn, BargeInStep, ErrorCode, VoiceState, VoiceStop, WakeAction

if TYPE_CHECKING:
    from loomd.audio.aec import EchoCanceller
    from loomd.audio.agent import Agent
    from loomd.audio.board import Board
    from loomd.audio.frontend import FrontEnd
    from loomd.audio.handoff import Handoff
    from loomd.audio.io import Source
    from loomd.audio.settings import VoiceSettings
    from loomd.audio.speaker import Speaker
    from loomd.audio.stages import Wake
    from loomd.audio.vad import Segment, Vad
    from loomd.audio.wake import Detection
    from loomd.audio.wakecheck import PhraseHeard
    from loomd.component import Context

__all__ = ["Pipeline"]

# Wake scoring runs on 80 ms; collecting 4 frames before each hop keeps it cheap.
_WAKE_FRAMES = 4
# The audio kept before a wake for the wake check's segment (loomd.audio.wakecheck.WakeSegment:
# cut around the score's peak, followed after the crossing), for the lead of a command said
# straight on from the wake word (`Segmenter.open(lead=...)`) and for the room's level.
_WAKE_SEGMENT_FRAMES = int(PRE_S * 1000) // FRAME_MS
# A barge-in candidate whose utterance ended before the check's verdict: the frame loop waits
# this long for it (the check takes ~0.5 s on a board); then playback goes on, unconfirmed.
_VERDICT_WAIT_S = 5.0


class Pipeline:
    def __init__(
        self,
        ctx: Context[VoiceSettings],
        *,
        wake: Wake,
        vad: Vad,
        aec: EchoCanceller | None,
        frontend: FrontEnd | None,
        speaker: Speaker,
        handoff: Handoff,
        board: Board,
        agent: Agent,
        counts: collections.Counter[str],
    ) -> None:
        self.ctx, self.wake, self.vad, self.aec, self.frontend = ctx, wake, vad, aec, frontend
        self.speaker, self.handoff, self.board, self.agent = speaker, handoff, board, agent
        self.counts = counts
        self.stop: Wake | None = None  # the stop word's detector, when there is one
        self.fresh: FreshQueue | None = None
        self._live_lock = asyncio.Lock()
        # a barge-in candidate's verdict, acted on as soon as the check is in (not at the
        # next frame: a satellite may send none until it hears back)
        self._acting: asyncio.Future[None] | None = None
        self._decided: bool | None = None

    async def listen(self, source: Source) -> None:
        """Run on a live source until it ends."""
        fresh = self.fresh = FreshQueue(max_frames=50, max_age_s=0.5)

        async def feed() -> None:
            async for frame in source.frames():
                fresh.put(frame)
            fresh.put(Frame(b"", -1.0, time.monotonic()))  # the end of a finite source

        async def frames() -> AsyncIterator[Frame]:
            while True:
                frame = await fresh.get()
                if not frame.pcm:
                    return
                yield frame

        feeder = asyncio.create_task(feed())
        try:
            async with self._live_lock:
                await self.run(frames(), wait_turns=False)
            await feeder
        finally:
            feeder.cancel()

    async def barge_in(self) -> None:
        """The wake word while speaking or thinking: cut playback, cancel the turn."""
        self.counts["barge_ins"] += 1
        self.speaker.stop()
        if self.board.busy():
            self.board.cancel_turn()
        await VoiceStop(self.ctx.settings.site, "barge-in").publish(self.ctx.bus)

    async def _duck(self, hit: Detection) -> None:
        """A barge-in candidate: lower the playback now, the check decides."""
        self.counts["bargein_ducks"] += 1
        self.speaker.duck(self.ctx.settings.wake.bargein_duck_db)
        await BargeIn(BargeInStep.DUCKED, hit.word, round(hit.score, 3),
                      self.ctx.settings.site).publish(self.ctx.bus)  # fmt: skip

    def _arm(self, hit: Detection) -> None:
        """The check on a barge-in candidate's segment just started: act on its verdict the
        moment it is in (`_decided` tells the frame loop)."""
        task = self.agent.checking
        if task is None:
            return

        def done(_: object) -> None:
            if self.agent.checking is task:  # not cancelled as moot meanwhile
                self._acting = asyncio.ensure_future(self._act(hit))

        task.add_done_callback(done)

    async def _act(self, hit: Detection) -> None:
        ok, heard = self.agent.verdict() or (False, None)
        await self._verdict(hit, ok, heard)
        self._decided = ok

    async def _settle(self, hit: Detection, segment: WakeSegment | None) -> bool:
        """The candidate's utterance ended before the verdict: check what its segment holds
        now (when its check had not started yet) and wait for the verdict (a refused
        candidate must not cut the reply, nor start a turn); no verdict in
        `_VERDICT_WAIT_S`: refused. A refused candidate's check is cancelled."""
        if segment is not None:
            self.agent.check_wake(segment.now(), hit.word)
            self._arm(hit)
        await self.agent.wait_verdict(_VERDICT_WAIT_S)
        await asyncio.sleep(0)  # the check's done callback has run
        if self._acting is not None:
            await self._acting
        if self._decided is None:
            await self._verdict(hit, False, None)
            self._decided = False
        if not self._decided:
            self.agent.cancel_check()
        return self._decided

    async def _verdict(self, hit: Detection, ok: bool, heard: PhraseHeard | None) -> None:
        """The check's verdict on a barge-in candidate: a confirmed one stops playback and
        cancels the turn (then listens, as after any wake); a refused one (or a failed
        check) brings the volume back and playback goes on."""
        s = self.ctx.settings
        text, gap, ms = ("", 0.0, 0.0) if heard is None else (heard.text, heard.open_gap, heard.ms)
        step = BargeInStep.CONFIRMED if ok else BargeInStep.REFUSED
        if ok:
            self.counts["wakes"] += 1
            self.agent.confirmed()
            if self.board.state == VoiceState.SPEAKING or self.board.busy():
                await self.barge_in()
            else:  # playback ended while the check ran: a wake like any other
                self.speaker.restore()
            self.handoff.ask(hit.word, hit.score, uuid.uuid4().hex[:12])
            await self.board.set(VoiceState.LISTENING)
        else:
            self.counts["bargein_refused"] += 1
            self.speaker.restore()
            why = "the check failed" if heard is None else f"heard {text!r}, {gap} under it"
            self.ctx.log.info("voice: barge-in refused (wake %s, score %.2f): %s; playback "
                              "goes on", hit.word, hit.score, why)  # fmt: skip
        await BargeIn(step, hit.word, round(hit.score, 3), s.site, text, gap,
                      round(ms, 1)).publish(self.ctx.bus)  # fmt: skip

    async def _stop_word(self, pcm: bytes, t_end: float) -> bool:
        """While the board plays: the stop word ends playback and the turn (no wake word,
        no listening after). False if it was not said (or the board said it itself)."""
        assert self.stop is not None
        try:
            hit = await self.stop.process(pcm, t_end, self.ctx.settings.stop.threshold)
        except WorkerError as exc:
            self.agent.stage_failed(ErrorCode.WAKE_FAILED, f"stop word failed: {exc}")
            return False
        if hit is None:
            return False
        if self.speaker.said_it(stop=True):
            self.counts["self_stops_blocked"] += 1
            return False
        self.counts["stops"] += 1
        self.ctx.log.info("voice: stop word %s (score %.2f)", hit.word, hit.score)
        self.speaker.stop()
        self.board.cancel_turn()
        await VoiceStop(self.ctx.settings.site, "stop word").publish(self.ctx.bus)
        await self.stop.reset(clock=False)
        return True

    def _start(self, cut: Segment, rec: TurnRecord, frame: Frame, detection: Detection | None,
               unchecked: WakeSegment | None) -> None:  # fmt: skip
        """Run the turn; a wake segment whose check has not started yet (`unchecked`: the
        utterance ended before the segment was complete) is checked now, as far as it goes."""
        checked = detection is not None and self.ctx.settings.wake.check is not None
        if unchecked is not None and detection is not None:
            self.agent.check_wake(unchecked.now(), detection.word)
        self.agent.start(cut, rec, frame, checked)

    async def _hold(self, segment: WakeSegment, pcm: bytes, t_end: float) -> None:
        """One wake chunk after the crossing: its score goes to the segment; once the peak is
        known the detector forgets the wake word (its feature window still holds it: it would
        fire again on it once the refractory period is over)."""
        try:
            await self.wake.process(pcm, t_end, self.ctx.settings.wake.limits())
            segment.score(self.wake.last)
        except WorkerError as exc:  # its worker restarts with a clean history
            self.agent.stage_failed(ErrorCode.WAKE_FAILED, f"wake word failed: {exc}")
            segment.stop()
            return
        if segment.held:
            await self.wake.reset(clock=False)

    async def run(self, frames: AsyncIterator[Frame], *, wait_turns: bool) -> list[TurnRecord]:
        """Frames -> wake -> VAD -> turns. Returns the turns started (for `voice test`)."""
        from loomd.audio.vad import Background, Segmenter

        s = self.ctx.settings
        board, handoff, speaker = self.board, self.handoff, self.speaker
        await self.wake.reset()
        seg = Segmenter(
            preroll_ms=s.vad.preroll_ms,
            hangover_ms=s.vad.hangover_ms,
            min_speech_ms=s.vad.min_speech_ms,
            max_utterance_s=s.vad.max_utterance_s,
            no_speech_s=s.vad.no_speech_s,
            level_drop_db=s.vad.level_drop_db,
            floor_db=s.vad.floor_db,
        )
        room = Background()  # the room's level before a wake (the room's rule)
        listening = False
        board.follow_up = False
        wake_buf: list[bytes] = []
        heard: collections.deque[bytes] = collections.deque(maxlen=_WAKE_SEGMENT_FRAMES)
        # the wake segment of the turn being listened to, until it is checked, and the wake
        # frames (the front end's) whose score it waits for
        segment: WakeSegment | None = None
        hold: list[bytes] = []
        turns: list[TurnRecord] = []
        detection: Detection | None = None
        # a barge-in candidate: playback ducked, listening, its check out; not yet the turn
        pending = False
        last: Frame | None = None
        was_muted = False
        async for frame in frames:
            last = frame
            self.counts["frames"] += 1
            speaker.tick()
            ref = speaker.reference  # what played over this frame's samples, sample-exact
            ref.heard(frame.t, frame.at)
            echo = ref.active(frame.t)
            played = ref.read(frame.t)
            if board.muted:  # the frame goes no further: no wake, no turn, no stream
                if pending:  # the candidate is moot: playback at its level again
                    pending = False
                    self.agent.cancel_check()
                    speaker.restore()
                if listening or handoff.streaming or handoff.listen_now:
                    listening = False
                    handoff.drop()
                    await board.set(VoiceState.IDLE)
                wake_buf, was_muted = [], True
                heard.clear()
                continue
            if was_muted:  # its history is from before the mute
                was_muted = False
                await self.wake.reset()
            if echo and self.aec is not None:
                frame = Frame(self.aec.process(frame.pcm, played), frame.t, frame.at)
            speech = frame.pcm  # what speech to text hears
            if self.frontend is not None:  # the wake word and the VAD hear the front end
                frame = Frame(self.frontend.process(frame.pcm), frame.t, frame.at)
                speech = frame.pcm if s.frontend.stt else speech
            if handoff.streaming:  # the turn is another part's: it hears the mic
                if not await handoff.feed(speech):
                    await self.wake.reset()
                    await board.set(VoiceState.IDLE)
                continue
            if handoff.listen_now and not listening:
                uid, handoff.listen_now = handoff.listen_now, ""
                await handoff.start(uid)
                await board.set(VoiceState.LISTENING, uid)
                continue
            if listening and (action := handoff.pending(speech)) is not None:
                if action != WakeAction.LOCAL:
                    listening = False
                    if segment is not None and not segment.held:
                        await self.wake.reset(clock=False)  # it still holds the wake word
                    segment = None
                    if action == WakeAction.STREAM:
                        await handoff.start(handoff.asked)
                        await handoff.feed(speech)
                    else:
                        await board.set(VoiceState.IDLE)
                    continue
            if listening:
                if segment is not None and detection is not None:
                    segment.push(speech)
                    if not segment.held:
                        hold.append(frame.pcm)
                        if len(hold) == _WAKE_FRAMES:
                            chunk, hold = b"".join(hold), []
                            await self._hold(segment, chunk, frame.t + FRAME_MS / 1000)
                    if (ready := segment.ready()) is not None:
                        self.agent.check_wake(ready, detection.word)
                        if pending:
                            self._arm(detection)
                        segment = None
                if pending and self._decided is not None:  # acted on by `_act`
                    pending = False
                    if not self._decided:  # not a wake: stop listening; playback goes on
                        listening, segment = False, None
                        self.agent.cancel_check()
                        await self.wake.reset()  # hear the next candidate at once
                        continue
                if not pending and (refused := self.agent.refused()) is not None:
                    listening = False  # not the wake word: stop listening now, quietly
                    handoff.cancel()
                    rec = TurnRecord.new(s.site, detection)
                    turns.append(rec)
                    quiet = self.agent.refuse(rec, refused)
                    segment = None
                    await self.wake.reset()  # hear the next wake at once, not 2 s later
                    await board.set(VoiceState.IDLE)
                    if wait_turns:
                        await asyncio.shield(quiet)
                    continue
                cut = seg.push(speech, frame.t, self.vad(frame.pcm))
                if cut is not None and pending and detection is not None:
                    # The utterance ended before the verdict: wait for it here (a refused
                    # candidate must not cut the reply, nor start a turn).
                    pending = False
                    if segment is not None and not segment.held:
                        await self.wake.reset(clock=False)
                    decided = await self._settle(detection, segment)
                    segment = None
                    if not decided:
                        listening = False
                        await self.wake.reset()
                        continue
                if cut is not None:
                    listening = False
                    handoff.cancel()
                    rec = TurnRecord.new(s.site, detection)
                    turns.append(rec)
                    self._start(cut, rec, frame, detection, segment)
                    if segment is not None and not segment.held:
                        await self.wake.reset(clock=False)  # it still holds the wake word
                    segment = None
                    if wait_turns and board.turn is not None:
                        await asyncio.shield(board.turn)
                continue
            if board.follow_up:  # the board just asked a question: listen without the wake
                board.follow_up = False
                listening, detection, wake_buf, segment, hold = True, None, [], None, []
                self.agent.cancel_check()
                self.vad.reset()
                seg.open(frame.t, no_speech_s=s.followup_s, background_db=room.db)
                await board.set(VoiceState.LISTENING)
                continue
            wake_buf.append(frame.pcm)
            if len(heard) == heard.maxlen:  # older than the wake segment: the room
                room.push(heard[0])
            heard.append(speech)
            if len(wake_buf) < _WAKE_FRAMES:
                continue
            pcm, wake_buf = b"".join(wake_buf), []
            t_end = frame.t + FRAME_MS / 1000
            if echo and self.aec is None and s.aec.gate:
                continue  # no echo cancellation: the board would hear itself
            if echo and self.aec is not None and ref.playing_ms(frame.t) < s.aec.converge_ms:
                continue  # the canceller has not converged yet: its residue can wake it
            if echo and self.stop is not None and await self._stop_word(pcm, t_end):
                continue
            limit = s.wake.playback_limits() if echo else s.wake.limits()
            try:
                hit = await self.wake.process(pcm, t_end, limit)
            except WorkerError as exc:  # its worker restarts; the next frames go to it
                self.agent.stage_failed(ErrorCode.WAKE_FAILED, f"wake word failed: {exc}")
                continue
            if hit is None:
                continue
            if speaker.said_it():
                self.counts["self_wakes_blocked"] += 1
                self.ctx.log.info("voice: ignored a wake (score %.2f): the board said it",
                                  hit.score)  # fmt: skip
                continue
            detection, hold = hit, []
            self.agent.cancel_check()  # a check still out for an earlier wake is moot
            lead = list(heard)  # the wake phrase: the command may have begun in it
            segment = WakeSegment(lead, hit.score) if s.wake.check is not None else None
            heard.clear()
            candidate = segment is not None and (board.state == VoiceState.SPEAKING or board.busy())
            self.counts["wakes"] += not candidate  # a barge-in candidate counts once confirmed
            self.ctx.log.info(
                "voice: %s %s (score %.2f)%s", "barge-in candidate" if candidate else "wake",
                hit.word, hit.score,
                f" {ref.playing_ms(frame.t):.0f} ms into playback" if echo else "",
            )  # fmt: skip
            # Its feature window still holds the wake word: it would fire again on it once
            # the refractory period is over. With a check, it hears on until the score's
            # peak (the check's segment ends after it), then forgets (`_hold`).
            if segment is None:
                await self.wake.reset(clock=False)
            listening = True
            self.vad.reset()
            # Said straight on ("hey jarvis what time is it"), the command's first word began
            # before the score crossed: the utterance opens with the audio before the
            # crossing (the phrase is cut off its transcript: Agent); after a pause, not.
            seg.open(t_end, lead=lead, background_db=room.db)
            if candidate:  # duck now; the check decides (the verdict above)
                pending, self._decided, self._acting = True, None, None
                await self._duck(hit)
                continue
            if board.state == VoiceState.SPEAKING or board.busy():
                await self.barge_in()  # no check: at once, over `speaking_threshold`
            handoff.ask(hit.word, hit.score, uuid.uuid4().hex[:12])
            await board.set(VoiceState.LISTENING)
        if listening and last is not None:
            # A finite source ended while listening: let the segmenter's clock run on over
            # silence so the utterance (or its absence) is decided as it would be live.
            t, silence = last.t, b"\0" * len(last.pcm)
            limit = s.vad.no_speech_s + s.vad.max_utterance_s
            cut = None
            while cut is None and t - last.t < limit:
                t += FRAME_MS / 1000
                cut = seg.push(silence, t, False)
            if cut is not None and pending and detection is not None:  # as in the loop
                if not await self._settle(detection, segment):
                    cut = None
                segment = None
            if cut is not None:
                handoff.cancel()
                rec = TurnRecord.new(s.site, detection)
                turns.append(rec)
                end = Frame(silence, t, time.monotonic())
                self._start(cut, rec, end, detection, segment)
        if wait_turns and board.turn is not None:
            await asyncio.shield(board.turn)
        return turns
