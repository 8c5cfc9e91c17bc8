"""The ESPHome API server against aioesphomeapi's own client (the library HA runs), with no
Home Assistant: plaintext and Noise sessions, device info with the voice features, the
entities, a switch command, a wrong key; and the WAV reader on HA's streamed WAVs. Runs
everywhere (no root, no testbed)."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from pathlib import Path

import pytest

from loomd.errors import LoomdError
from loomd.homeassistant.satellite import wav_pcm
from tests.homeassistant.conftest import board, component, free_port, ha_section

pytest.importorskip("aioesphomeapi")
CORE = ("state", "bus", "homeassistant")


@pytest.mark.parametrize("encrypted", [False, True])
def test_aioesphomeapi_client_session(tmp_path: Path, encrypted: bool) -> None:
    from aioesphomeapi import APIClient, InvalidEncryptionKeyAPIError

    key = base64.b64encode(os.urandom(32)).decode() if encrypted else ""
    port = free_port()

    async def scenario() -> None:
        async with board(tmp_path, ha_section(port, key, mdns="false"), "api-client",
                         CORE) as host:  # fmt: skip
            comp = component(host, "homeassistant")
            cli = APIClient("127.0.0.1", port, None, noise_psk=key or None)
            await cli.connect(login=True)
            try:
                info = await cli.device_info()
                assert info.name == comp.device.name and info.mac_address == comp.device.mac
                assert info.voice_assistant_feature_flags == comp.device.voice_flags
                assert info.api_encryption_supported is encrypted
                entities, _ = await cli.list_entities_services()
                kinds = sorted(type(e).__name__ for e in entities)
                assert kinds == ["MediaPlayerInfo", "SwitchInfo"], kinds
                mute = next(e for e in entities if type(e).__name__ == "SwitchInfo")
                states: list[object] = []
                cli.subscribe_states(states.append)
                cli.switch_command(mute.key, True)
                async with asyncio.timeout(5):
                    while not comp.satellite.muted:  # noqa: ASYNC110 - a component's state
                        await asyncio.sleep(0.01)
                    while not any(getattr(s, "state", None) is True for s in states):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            finally:
                await cli.disconnect()
            if encrypted:
                wrong = APIClient("127.0.0.1", port, None,
                                  noise_psk=base64.b64encode(os.urandom(32)).decode())  # fmt: skip
                with pytest.raises(InvalidEncryptionKeyAPIError):
                    await wrong.connect(login=True)
                assert comp.server.handshake_failures == 1

    asyncio.run(scenario())


def _wav(pcm: bytes, rate: int = 16000, channels: int = 1, size: int | None = None) -> bytes:
    n = len(pcm) if size is None else size
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    riff = struct.pack("<I", (36 + n) & 0xFFFFFFFF)
    return (
        b"RIFF"
        + riff
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", n) + pcm)
    )


def test_wav_reader_takes_streamed_headers_and_refuses_the_rest() -> None:
    pcm = bytes(range(200)) * 4
    assert wav_pcm(_wav(pcm)) == (pcm, 16000, 1)
    for unknown in (0, 0xFFFFFFFF):  # HA's TTS proxy streams before it knows the length
        assert wav_pcm(_wav(pcm, 22050, 2, size=unknown)) == (pcm, 22050, 2)
    with pytest.raises(LoomdError, match="not a WAV"):
        wav_pcm(b"fLaC" + pcm)
    with pytest.raises(LoomdError, match="without a data chunk"):
        wav_pcm(_wav(pcm)[:36])


def test_who_takes_a_wake_word() -> None:
    """The claim's decision table (no I/O: no turn is started in these cases)."""
    from loomd.homeassistant.satellite import Satellite
    from loomd.homeassistant.settings import HomeAssistantSettings
    from loomd.messages import WakeAction, WakeDetected

    s = HomeAssistantSettings(wake_modes={"hey_jarvis_v0.1": "satellite", "alexa_v0.1": "local"})
    sat = Satellite(s, bus=None, words=list(s.wake_modes))
    jarvis, alexa = WakeDetected("hey_jarvis_v0.1", 0.9), WakeDetected("alexa_v0.1", 0.9)
    assert sat.claim(jarvis).action == WakeAction.LOCAL  # HA away: the board answers
    sat.conn = object()  # type: ignore[assignment]  # HA holds the voice assistant
    assert sat.claim(alexa).action == WakeAction.LOCAL  # a local word stays local
    assert sat.claim(WakeDetected("hey_jarvis_v0.1", 0.9, "garage")).action == WakeAction.LOCAL
    sat.active = ["alexa_v0.1"]  # HA switched hey jarvis off
    assert sat.claim(jarvis).action == WakeAction.DROP
    sat.muted = True  # the mute switch silences every word
    assert sat.claim(alexa).action == WakeAction.DROP
    assert sat.counts["wakes_dropped"] == 2


def test_settings_say_what_is_wrong() -> None:
    from loomd.errors import ConfigError
    from loomd.homeassistant.settings import HomeAssistantSettings

    with pytest.raises(ConfigError, match="base64 32-byte key"):
        HomeAssistantSettings(encryption_key="c2hvcnQ=")
    with pytest.raises(ConfigError, match="satellite or local"):
        HomeAssistantSettings(wake_modes={"hey_jarvis_v0.1": "cloud"})
    with pytest.raises(ConfigError, match="token file"):
        HomeAssistantSettings(url="http://127.0.0.1:8123")


def test_the_key_from_a_file_and_a_bad_one_fails_the_start(tmp_path: Path) -> None:
    from aioesphomeapi import APIClient

    key = base64.b64encode(os.urandom(32)).decode()
    (tmp_path / "key").write_text(key + "\n")
    (tmp_path / "bad").write_text("not a key\n")
    port = free_port()

    async def scenario() -> tuple[str, str]:
        body = ha_section(port, mdns="false", encryption_key_file=f'"{tmp_path / "key"}"')
        async with board(tmp_path / "a", body, "key-file", CORE):
            cli = APIClient("127.0.0.1", port, None, noise_psk=key)
            await cli.connect(login=True)
            name = (await cli.device_info()).name
            await cli.disconnect()
        body = ha_section(port, mdns="false", encryption_key_file=f'"{tmp_path / "bad"}"')
        async with board(tmp_path / "b", body, "key-file", CORE) as host:
            slot = host.slots["homeassistant"]
            return name, f"{slot.state}: {slot.reason}"

    name, failed = asyncio.run(scenario())
    assert name == "loomd-key-file"
    assert failed.startswith("failed") and "not a base64 32-byte key" in failed, failed
