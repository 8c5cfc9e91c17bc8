"""Home Assistant: the board as HA's voice satellite against HA's own Wyoming path, one run.

    .venv/bin/python bench/homeassistant.py [--quick]

A real HA (scripts/ha-testbed, built once; LOOMD_HA_TESTBED=<dir>/testbed.json reuses a
running one) and an in-process board (state, bus, voice, homeassistant; the microphone
fed from a WAV at real-time pace on `audio.in.local`, the speaker read on
`audio.out.local`). HA's pipeline uses loomd's Wyoming STT/TTS, so nothing leaves the box.

- `satellite_wake_to_tts_ms`: "hey jarvis, turn on the kitchen lights" on the board's
  microphone; from the end of speech (the clip's speech end, at real-time pace) to the
  first frame of HA's spoken answer on the board's speaker; p50 over the turns;
- `satellite_light_ms`: end of speech to HA's light state changed (seen over HA's WebSocket);
- `wyoming_path_wake_to_tts_ms` (baseline): the same command through HA's Assist pipeline
  over its WebSocket API (`assist_pipeline/run`, stt -> tts, audio streamed at real-time
  pace) with the same Wyoming STT/TTS: end of speech to the first bytes of the TTS audio;
- `local_mode_action_ms`: the same clip to a board in local mode (`[homeassistant] mode =
  "local"`, `[voice] agent = "assist"`: loomd's own STT and hassil, HA's light a device of
  the home registry through HA's WebSocket API): end of speech to HA's light state changed
  (seen over HA's WebSocket); p50 over the turns;
- `adoption_ms`: HA's ESPHome config flow until its satellite entity is idle;
- `ha_up_s`: the testbed's start to onboarded (warm tree), hass's RSS.
- `ha_command_to_bus_ms`: HA's `switch.turn_on`/`turn_off` on the board's MQTT Mute switch
  (a real mosquitto, HA's MQTT integration) to the `VoiceMute` on loomd's bus; p50 of 10.
Progress on stderr; one JSON line last on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import background, small_models_dir  # noqa: E402
from loomd.audio.io import read_wav  # noqa: E402
from tests.audio.conftest import join_wavs, say_wav  # noqa: E402
from tests.homeassistant.conftest import HaApi, HaTestbed  # noqa: E402
from tests.homeassistant.test_satellite import _quiet, _speaker, feed_mic, rig  # noqa: E402

QUICK = "--quick" in sys.argv
TURNS = 3 if QUICK else 10
TAIL_S = 0.8  # silence after the command in the clip (the end of speech is before it)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def p50(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def testbed(tmp: Path) -> tuple[HaTestbed, float | None, Path | None]:
    reuse = os.environ.get("LOOMD_HA_TESTBED")
    if reuse:
        info = json.loads(Path(reuse).read_text())
        return HaTestbed(info["url"], info["token"], info["light"], Path(info["log"])), None, None
    run = tmp / "ha"
    t = time.monotonic()
    p = subprocess.run([sys.executable, str(REPO / "scripts/ha-testbed"), "up", "--dir",
                        str(run)], capture_output=True, text=True, timeout=900)  # fmt: skip
    if p.returncode:
        raise SystemExit(f"ha-testbed up failed:\n{p.stderr[-3000:]}")
    info = json.loads(p.stdout.splitlines()[-1])
    tb = HaTestbed(info["url"], info["token"], info["light"], Path(info["log"]))
    return tb, time.monotonic() - t, run


def hass_rss_mb(tb: HaTestbed) -> float | None:
    try:
        pid = int((tb.log.parent / "hass.pid").read_text())
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


async def light_watch(api: HaApi, light: str, changes: list[tuple[float, str]]) -> None:
    await api.call({"type": "subscribe_events", "event_type": "state_changed"})
    while True:
        msg = await api.ws.receive_json()
        if msg.get("type") != "event":
            continue
        data = msg["event"]["data"]
        if data["entity_id"] == light and data.get("new_state"):
            changes.append((time.monotonic(), data["new_state"]["state"]))


async def satellite_turns(tb: HaTestbed, models: Path, tmp: Path, clip: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"tts": [], "light": [], "adoption_ms": None, "stt": []}
    async with rig(tb, tmp / "board", models, "bench-sat") as r, HaApi(tb) as watch:
        out["adoption_ms"] = round(r.adoption_ms, 1)
        first: list[float] = []

        async def tap() -> None:
            async with r.bus.subscribe("audio.out.local", "realtime") as sub:
                async for _ in sub:
                    first.append(time.monotonic())

        changes: list[tuple[float, str]] = []
        async with background(tap(), light_watch(watch, tb.light, changes)):
            for i in range(TURNS):
                await r.api.post("/api/services/light/turn_off", {"entity_id": tb.light})
                await asyncio.sleep(0.5)
                first.clear()
                changes.clear()
                n = len(r.sat.history)
                began = time.monotonic()
                fed = asyncio.create_task(r.mic(clip, silence_s=2.5))
                speech_end = began + len(clip) / 32000 - TAIL_S
                async with asyncio.timeout(60):
                    while len(r.sat.history) <= n:  # noqa: ASYNC110 - the satellite's record
                        await asyncio.sleep(0.02)
                await fed
                await _quiet(r.heard)
                run = r.sat.history[-1]
                on = [at for at, state in changes if state == "on"]
                if first and not run["error"]:
                    out["tts"].append((first[0] - speech_end) * 1000)
                if on:
                    out["light"].append((on[0] - speech_end) * 1000)
                out["stt"].append(run["stt"])
                offset = (run["began"] - speech_end) * 1000  # the run's clock -> speech end
                rel = {k: round(v + offset) for k, v in run["timings"].items()
                       if k in ("vad_end", "stt_end", "intent_end", "tts_end", "tts_fetched",
                                "first_audio")}  # fmt: skip
                log(f"  satellite stages, ms after the end of speech: {rel}")
                log(f"satellite turn {i + 1}: first TTS audio "
                    f"{(first[0] - speech_end) * 1000 if first else float('nan'):.0f} ms after "
                    f"speech, light {'on' if on else 'unchanged'}, heard {run['stt']!r}, "
                    f"HA timings {run['timings']}")  # fmt: skip
    return out


async def local_mode_turns(tb: HaTestbed, models: Path, tmp: Path, clip: bytes) -> list[float]:
    """`local_mode_action_ms`: the clip on the microphone of a board in local mode; end of
    speech to HA's light "on" (HA's WebSocket), each turn from the light off."""
    from loomd.assist.cli import turn
    from loomd.bus.local import LocalBus
    from tests.homeassistant.conftest import board, free_port, ha_section

    token = tmp / "ha-token"
    token.write_text(tb.token)
    body = (
        f'[voice]\nenabled = true\nmodels_dir = "{models}"\nsource = "bus"\nsink = "bus"\n'
        'agent = "assist"\n[assist]\nenabled = true\nllm = false\n'
        + ha_section(free_port(), url=f'"{tb.url}"', token_file=f'"{token}"',
                     mode='"local"', mdns="false")
    )  # fmt: skip
    names = ("state", "bus", "agents", "home", "assist", "voice", "homeassistant")
    times: list[float] = []
    async with board(tmp / "local", body, "bench-local", names) as host, HaApi(tb) as watch:
        bus = LocalBus(host.services.broker, "bench")  # type: ignore[arg-type]
        async with asyncio.timeout(60):  # HA's light joined the registry, the assist knows it
            while not (await turn(bus, "turn off the kitchen lights", "", 10)).actions:  # noqa: ASYNC110
                await asyncio.sleep(0.3)
        heard = bytearray()
        changes: list[tuple[float, str]] = []
        async with background(_speaker(bus, heard), light_watch(watch, tb.light, changes)):
            for i in range(TURNS):
                async with HaApi(tb) as api:
                    await api.post("/api/services/light/turn_off", {"entity_id": tb.light})
                await asyncio.sleep(0.5)
                changes.clear()
                heard.clear()
                began = time.monotonic()
                speech_end = began + len(clip) / 32000 - TAIL_S
                await feed_mic(bus, clip, silence_s=1.5)
                await _quiet(heard)  # the board's reply spoken: the turn is over
                on = [at for at, state in changes if state == "on"]
                if on:
                    times.append((on[0] - speech_end) * 1000)
                log(f"local mode turn {i + 1}: HA's light "
                    + (f"on {times[-1]:.0f} ms after speech" if on else "unchanged"))  # fmt: skip
    return times


async def wyoming_path(tb: HaTestbed, models: Path, tmp: Path, command: bytes) -> list[float]:
    """The same command through HA's Assist pipeline over its WebSocket API (no satellite):
    HA's own way to use loomd's Wyoming STT and TTS."""
    from tests.homeassistant.conftest import board, free_port, voice_section
    from tests.homeassistant.test_satellite import _wyoming_entities

    times: list[float] = []
    wy_port = free_port()
    async with board(tmp / "wy", voice_section(models, wy_port), "bench-wy",
                     ("state", "bus", "voice")) as _, HaApi(tb) as api:  # fmt: skip
        wy = await api.flow("wyoming", {"host": "127.0.0.1", "port": wy_port})
        entry = wy["result"]["entry_id"]
        try:
            stt, tts = await _wyoming_entities(api, entry)
            pipe = await api.call({
                "type": "assist_pipeline/pipeline/create", "name": "bench wyoming",
                "language": "en", "conversation_engine": "conversation.home_assistant",
                "conversation_language": "en", "stt_engine": stt, "stt_language": "en",
                "tts_engine": tts, "tts_language": "en", "tts_voice": "en_US-joe-medium",
                "wake_word_entity": None, "wake_word_id": None})  # fmt: skip
            for i in range(TURNS):
                await api.post("/api/services/light/turn_off", {"entity_id": tb.light})
                ms = await _one_ws_run(api, pipe["id"], command)
                times.append(ms)
                log(f"wyoming path turn {i + 1}: first TTS bytes {ms:.0f} ms after speech")
        finally:
            await api.delete(f"/api/config/config_entries/entry/{entry}")
    return times


async def _one_ws_run(api: HaApi, pipeline: str, command: bytes) -> float:
    api._n += 1
    n = api._n
    await api.ws.send_json({"id": n, "type": "assist_pipeline/run", "start_stage": "stt",
                            "end_stage": "tts", "pipeline": pipeline,
                            "input": {"sample_rate": 16000}})  # fmt: skip
    handler: int | None = None
    url = ""
    stages: dict[str, int] = {}
    pcm = command + b"\0" * 32000 * 3
    speech_end = 0.0
    async with asyncio.timeout(60):
        while handler is None:
            msg = await api.ws.receive_json()
            if msg.get("id") == n and msg["type"] == "event":
                ev = msg["event"]
                if ev["type"] == "run-start":
                    handler = ev["data"]["runner_data"]["stt_binary_handler_id"]
        began = time.monotonic()
        speech_end = began + len(command) / 32000 - TAIL_S

        async def feed() -> None:
            prefix = bytes([handler])
            for i in range(0, len(pcm), 640):
                delay = began + i / 32000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await api.ws.send_bytes(prefix + pcm[i : i + 640])

        feeder = asyncio.create_task(feed())
        try:
            while not url:
                msg = await api.ws.receive_json()
                if msg.get("id") != n or msg["type"] != "event":
                    continue
                ev = msg["event"]
                stages[ev["type"]] = round((time.monotonic() - speech_end) * 1000)
                if ev["type"] == "stt-vad-end":
                    feeder.cancel()
                    await api.ws.send_bytes(bytes([handler]))  # end of audio
                elif ev["type"] == "tts-end":
                    url = ev["data"]["tts_output"]["url"]
                elif ev["type"] == "error":
                    raise SystemExit(f"pipeline error: {ev['data']}")
        finally:
            feeder.cancel()
        async with api.http.get(api.tb.url + url) as resp:
            await resp.content.readany()
            first = time.monotonic()
        stages["first_bytes"] = round((first - speech_end) * 1000)
        log(f"  HA stages, ms after the end of speech: {stages}")
        while True:  # drain the run's last events
            msg = await api.ws.receive_json()
            if msg.get("id") == n and msg["type"] == "event" and msg["event"]["type"] == "run-end":
                break
    return (first - speech_end) * 1000


async def ha_command_to_bus(tb: HaTestbed, tmp: Path, n: int = 10) -> list[float]:
    """HA's `switch.turn_on`/`turn_off` on the board's Mute switch (MQTT discovery, a real
    mosquitto) until the `VoiceMute` is on loomd's bus, ms; `n` alternating commands."""
    from loomd.host import Host
    from loomd.messages import VoiceMute
    from loomd.settings import load_config
    from tests.bridges.conftest import Mosquitto, host_config
    from tests.homeassistant.test_mqtt_commands import (
        ha_mqtt,
        loomd_entities,
        mqtt_body,
        wait_states,
    )

    broker = Mosquitto(tmp / "mqtt-broker")
    broker.start()
    out: list[float] = []
    try:
        async with HaApi(tb) as api, ha_mqtt(api, broker):
            cfg = host_config(tmp / "mqtt-board", mqtt_body(broker.port), "bench-mqtt")
            async with Host(load_config(cfg), names=["state", "bus", "mqtt"]) as host:
                bus = host.get("mqtt").ctx.bus  # type: ignore[union-attr]
                mute = (await loomd_entities(api, "bench-mqtt", 8))["mute"]
                await wait_states(api, [mute], lambda s: s in ("on", "off"))  # available
                async with bus.subscribe("voice.mute", "reliable") as sub:
                    for i in range(n + 1):  # the first one warms HA's service path up
                        on = i % 2 == 0
                        service = "turn_on" if on else "turn_off"
                        t0 = time.perf_counter()
                        call = asyncio.ensure_future(
                            api.post(f"/api/services/switch/{service}", {"entity_id": mute})
                        )
                        got = VoiceMute.from_event(await sub.get(15))
                        ms = (time.perf_counter() - t0) * 1000
                        await call
                        assert got.muted is on, got
                        if i:
                            out.append(ms)
        log(f"HA command -> bus: p50 {p50(out)} ms over {len(out)}")
    finally:
        broker.stop()
    return out


async def main() -> None:
    models = small_models_dir()
    with tempfile.TemporaryDirectory(prefix="ld-bench-ha-") as d:
        tmp = Path(d)
        wake = say_wav("hey jarvis", tmp / "wake.wav", pad=(0.5, 0.6))
        cmd = say_wav("turn on the kitchen lights", tmp / "cmd.wav", pad=(0.0, TAIL_S))
        clip = read_wav(join_wavs([wake, cmd], tmp / "command.wav"))
        command = read_wav(say_wav("turn on the kitchen lights", tmp / "c2.wav", pad=(0.3, TAIL_S)))
        tb, up_s, run = testbed(tmp)
        try:
            log(f"HA at {tb.url}" + (f" (up in {up_s:.1f} s)" if up_s else " (reused)"))
            sat = await satellite_turns(tb, models, tmp, clip)
            wy = await wyoming_path(tb, models, tmp, command)
            ha_cmd = await ha_command_to_bus(tb, tmp)
            local = await local_mode_turns(tb, models, tmp, clip)
            rss = hass_rss_mb(tb)
        finally:
            if run is not None:
                down = [sys.executable, str(REPO / "scripts/ha-testbed"), "down", "--dir", str(run)]
                await asyncio.to_thread(subprocess.run, down, timeout=120)
    result = {
        "bench": "homeassistant",
        "quick": QUICK,
        "turns": TURNS,
        "satellite_wake_to_tts_ms": p50(sat["tts"]),
        "satellite_turns_ok": len(sat["tts"]),
        "satellite_light_ms": p50(sat["light"]),
        "wyoming_path_wake_to_tts_ms": p50(wy),
        "satellite_over_wyoming_path": (
            round(p50(sat["tts"]) / p50(wy), 2) if sat["tts"] and wy else None  # type: ignore[operator]
        ),
        "local_mode_action_ms": p50(local),
        "local_mode_turns_ok": len(local),
        "ha_command_to_bus_ms": p50(ha_cmd),
        "adoption_ms": sat["adoption_ms"],
        "ha_up_s": round(up_s, 1) if up_s else None,
        "hass_rss_mb": rss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if os.environ.get("LOOMD_BENCH_LOG"):
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        logging.getLogger("loomd").setLevel(os.environ["LOOMD_BENCH_LOG"])
    asyncio.run(main())
