"""The board's Wyoming server on mDNS (`_wyoming._tcp`, what HA's Wyoming integration
discovers): the voice component announces it (`[voice.wyoming] mdns`, on by default), a
zeroconf browser on lo finds it, resolves it to the address the server is
bound to, and a Wyoming client there gets the board's STT/TTS/wake description."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.homeassistant.conftest import board, free_port, voice_section

pytestmark = [
    pytest.mark.models,
    pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning"),
]


def test_wyoming_browsed_on_loopback(tmp_path: Path, models: Path) -> None:
    pytest.importorskip("zeroconf")
    port = free_port()

    async def scenario() -> None:
        from wyoming.client import AsyncTcpClient
        from wyoming.info import Describe, Info
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        from loomd.homeassistant.mdns import WYOMING

        body = voice_section(models, port)  # [voice.wyoming] on 127.0.0.1:port
        async with board(tmp_path, body, "wy-mdns", ("state", "bus", "voice")):
            zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
            found: asyncio.Queue[str] = asyncio.Queue()

            def seen(zeroconf: object, service_type: str, name: str,
                     state_change: ServiceStateChange) -> None:  # fmt: skip
                if state_change is ServiceStateChange.Added:
                    found.put_nowait(name)

            browser = AsyncServiceBrowser(zc.zeroconf, [WYOMING], handlers=[seen])
            try:
                name = await asyncio.wait_for(found.get(), 10)
                assert name == f"loomd-wy-mdns.{WYOMING}"
                info = AsyncServiceInfo(WYOMING, name)
                assert await info.async_request(zc.zeroconf, 5000), "no answer over mDNS"
                assert info.parsed_addresses() == ["127.0.0.1"] and info.port == port
                async with AsyncTcpClient(info.parsed_addresses()[0], info.port) as client:
                    await client.write_event(Describe().event())
                    async with asyncio.timeout(10):
                        while not Info.is_type((ev := await client.read_event()).type):
                            pass
                described = Info.from_event(ev)
                assert described.asr and described.asr[0].name == "loomd-whisper"
                assert described.tts and described.wake
            finally:
                await browser.async_cancel()
                await zc.async_close()

    asyncio.run(scenario())
