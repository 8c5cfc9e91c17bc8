"""`loomctl say TEXT` and `loomctl voice last|test|stop`: built on `loomd.cli.op()`."""

from __future__ import annotations

from typing import Any

from loomd.cli import op
from loomd.messages import TurnStage

__all__ = ["add_cli"]


def add_cli(cmds: Any) -> None:
    say = cmds.add_parser("say", help="speak text on the board")
    say.add_argument("text")
    say.add_argument("--announce", action="store_true", help="interrupt what is playing")
    say.set_defaults(func=_say)
    voice = cmds.add_parser("voice", help="the voice pipeline: last, test, stop, mute")
    vc = voice.add_subparsers(dest="voice_cmd", required=True)
    last = vc.add_parser("last", help="the last interactions with their timings (waterfall)")
    last.add_argument("n", nargs="?", type=int, default=5)
    test = vc.add_parser("test", help="run the whole pipeline on a WAV file")
    test.add_argument("clip")
    test.add_argument("--out", default="", help="where to write the reply audio")
    test.add_argument("--json", action="store_true", help="the result as one JSON object")
    test.add_argument(
        "--wait", type=float, default=300.0, help="seconds to wait for the whole turn (300)"
    )
    vc.add_parser("stop", help="stop speaking and cancel the current turn")
    mute = vc.add_parser("mute", help="mute (on) or unmute (off) the microphone")
    mute.add_argument("on", choices=("on", "off"))
    voice.set_defaults(func=_voice)


async def _say(bus: Any, args: Any) -> int:
    r = await op(bus, "voice.say", args.text, "announcement" if args.announce else "normal",
                 timeout=120.0)  # fmt: skip
    print(f"spoke {r['seconds']} s ({r['engine']}, synthesis {r['tts_ms']} ms)")
    return 0


def waterfall(turn: dict[str, Any]) -> list[str]:
    """One line per stage: ms since the end of speech, with a bar."""
    t = turn.get("timings", {})
    end = max(t.values(), default=1.0) or 1.0
    out = []
    for key in TurnStage:
        if key in t:
            bar = "#" * max(1, int(40 * t[key] / end)) if t[key] > 0 else ""
            out.append(f"  {key:<15}{t[key]:>9.0f} ms {bar}")
    return out


def _print_turn(turn: dict[str, Any]) -> None:
    wake = f"{turn['wake']} ({turn['wake_score']})" if turn.get("wake") else "-"
    print(f"utterance {turn['utterance_id']}: {turn['outcome']}"
          + (f" ({turn['error']})" if turn.get("error") else ""))  # fmt: skip
    print(f"  wake:       {wake}")
    print(f"  transcript: {turn.get('transcript') or '-'}")
    intent = turn.get("intent") or {}
    if intent.get("name"):
        print(f"  intent:     {intent['name']} ({intent.get('via')}) {intent.get('slots') or ''}")
    for a in turn.get("actions") or ():
        print(f"  action:     {a['capability']} {a.get('params')} {a.get('code')}")
    print(f"  reply:      {turn.get('reply') or '-'}")
    for line in waterfall(turn):
        print(line)


async def _voice(bus: Any, args: Any) -> int:
    import os

    if args.voice_cmd == "last":
        turns = (await op(bus, "voice.last", args.n))["turns"]
        if not turns:
            print("no interactions recorded yet")
        for turn in turns:
            _print_turn(turn)
        return 0
    if args.voice_cmd == "mute":
        r = await op(bus, "voice.mute", args.on)
        print("microphone muted" if r["muted"] else "microphone on")
        return 0
    if args.voice_cmd == "stop":
        await op(bus, "voice.stop")
        return 0
    clip, out = os.path.abspath(args.clip), os.path.abspath(args.out) if args.out else ""  # noqa: ASYNC240 (no I/O: pure string work)
    r = await op(bus, "voice.test", clip, out, timeout=args.wait)
    if getattr(args, "json", False):
        from loomd.cli import dumps

        print(dumps(r))
        return 0 if r["turns"] and all(t["outcome"] == "ok" for t in r["turns"]) else 1
    if not r["turns"]:
        print("no wake word heard")
        return 1
    for turn in r["turns"]:
        _print_turn(turn)
    if r["reply_audio"]:
        print(f"reply audio: {r['reply_audio']} ({r['reply_seconds']} s)")
    return 0 if all(t["outcome"] == "ok" for t in r["turns"]) else 1
