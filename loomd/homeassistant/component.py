"""The `homeassistant` component: the board as Home Assistant's voice satellite.

It serves the ESPHome native API (plaintext, or Noise with `encryption_key`), announces
itself on mDNS, claims the wake words that are HA's (`voice.wake`), streams their audio
to HA's Assist pipeline and plays the answers through the voice component
(`voice.play`). See docs/design/homeassistant.md."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomd import __version__
from loomd.audio.settings import WakeSettings
from loomd.component import Command, Component, StatusBlock
from loomd.config import read_credential
from loomd.errors import LoomdError
from loomd.homeassistant.settings import HomeAssistantSettings, decode_key
from loomd.messages import ErrorCode, HaSnapshot, HaState, Topic, WakeDetected
from loomd.metrics import Family

__all__ = ["HomeAssistantComponent", "HomeAssistantStatus"]


@dataclass(frozen=True)
class HomeAssistantStatus(StatusBlock):
    api: str  # host:port and the mode (plaintext / Noise)
    ha_connected: bool
    client: str
    runs: int
    active_wake_words: list[str]
    ha_api: str  # the WebSocket client: connected, or why not ("" = not configured)
    last_run: dict[str, Any]


def _mac(device_id: str) -> str:
    """A stable, locally administered MAC for the board (HA keys ESPHome devices by it)."""
    h = hashlib.sha256(device_id.encode()).digest()
    return ":".join(f"{b:02X}" for b in (0x02, *h[:5]))


class HomeAssistantComponent(Component[HomeAssistantSettings]):
    requires = ("aioesphomeapi", "zeroconf", "aiohttp")
    extra = "homeassistant"
    apt = "loomd-homeassistant"
    summary = "Home Assistant voice satellite over the ESPHome native API (mDNS, Noise)"

    async def start(self) -> None:
        from loomd.homeassistant.esphome import ApiServer, DeviceIdentity, MediaPlayer, MuteSwitch
        from loomd.homeassistant.satellite import Satellite

        s = self.settings
        psk = decode_key(await self._key())
        name = (
            s.name
            or "loomd-" + "".join(c if c.isalnum() else "-" for c in self.ctx.device_id).lower()
        )
        # the wake words HA may choose from: those named in wake_modes, else voice's default
        words = list(s.wake_modes) or [Path(m).stem for m in WakeSettings().models]
        flags = 1 | 4 | 8 | 16 | 32  # voice assistant, API audio, timers, announce, start conv.
        self.device = DeviceIdentity(
            name=name[:63], friendly_name=s.friendly_name or name, mac=_mac(self.ctx.device_id),
            version=__version__, voice_flags=flags, suggested_area=s.area,
            encrypted=psk is not None,
        )  # fmt: skip
        self.satellite = Satellite(s, self.ctx.bus, words)
        self.satellite.on_error = self.ctx.error
        self.server = ApiServer(self.device, psk, self.satellite)
        self.satellite.server = self.server
        player = MediaPlayer(1, self.satellite.play_media, self.satellite.stop_media)
        self.satellite.player = player
        self.server.entities = [player, MuteSwitch(2, self._muted)]
        host = s.host or ("0.0.0.0" if psk is not None else "127.0.0.1")
        await self.server.start(host, s.port)
        self.api = f"{host}:{self.server.port} ({'Noise' if psk else 'plaintext'})"
        self.mdns: Any = None
        if s.mdns:
            from loomd.homeassistant.mdns import esphome_announcer

            self.mdns = esphome_announcer(self.device, self.server.port, s.mdns_interfaces)
            await self.mdns.start()
        self.spawn(self._serve_wakes, "wakes", restart=True)
        self.spawn(self._follow_frames, "frames", restart=True)
        self.client: Any = None
        if s.url:
            from loomd.homeassistant.client import HaClient

            token = read_credential(s.token_credential)
            if token is None:
                token = await asyncio.to_thread(Path(s.token_file).read_text)
            self.client = HaClient(s.url, token.strip())
            self.ha_snapshot = HaSnapshot(connected=False)
            self._registry_dirty = asyncio.Event()
            backoff = (min(0.5, s.reconnect_max_s), s.reconnect_max_s)
            self.spawn(
                lambda: self.client.run(self._ha_state, backoff, self._ha_registry_changed),
                "ha-client",
                restart=True,
            )
            self.spawn(self._offer_capabilities, "capabilities", restart=True)
            self.spawn(self._follow_registry, "ha-registry", restart=True)
            self.spawn(self._serve_registry, "ha-registry-requests", restart=True)

    async def _key(self) -> str:
        path = self.settings.encryption_key_file
        if not path:
            return self.settings.encryption_key
        try:
            key = (await asyncio.to_thread(Path(path).read_text)).strip()
            decode_key(key)
        except OSError as exc:
            raise LoomdError(f"homeassistant.encryption_key_file: {exc.strerror}: {path}") from None
        except ValueError:
            raise LoomdError(
                f"homeassistant.encryption_key_file {path}: not a base64 32-byte key "
                "(make one with `openssl rand -base64 32`)"
            ) from None
        return key

    async def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            await self.client.close()
        if getattr(self, "mdns", None) is not None:
            await self.mdns.stop()
        if hasattr(self, "server"):
            await self.server.stop()
            await self.satellite.close()

    async def _offer_capabilities(self) -> None:
        """HA's services as capabilities (`homeassistant.turn_on`, ...) for the broker."""
        from loomd.agents.capability import specs_of
        from loomd.agents.sdk import serve_capabilities, spec_list
        from loomd.homeassistant.capabilities import HaCapabilities

        broker = spec_list(specs_of(HaCapabilities(self.client)))
        async with serve_capabilities(self.ctx.bus, "homeassistant", broker):
            await asyncio.Event().wait()  # served until the component stops

    async def _ha_registry_changed(self) -> None:
        self._registry_dirty.set()

    async def _follow_registry(self) -> None:
        """HA's areas, devices and exposed entities, read again after each (re)connect and
        each change of its registries (a burst read once), published on `ha.changed`."""
        while True:
            await self._registry_dirty.wait()
            await asyncio.sleep(0.2)  # a burst of registry events: one read
            self._registry_dirty.clear()
            try:
                if not await self.client.running():
                    # HA answers its WebSocket API while it starts, before its integrations
                    # have made their entities: a snapshot now would lack them
                    self._registry_dirty.set()
                    await asyncio.sleep(0.5)
                    continue
                self.ha_snapshot = await self.client.snapshot()
            except LoomdError as exc:
                self.log.warning("homeassistant: reading HA's registry: %s", exc)
                continue  # the next connect reads it again
            await self.ha_snapshot.publish(self.ctx.bus, Topic.HA_CHANGED, wait=False)

    async def _serve_registry(self) -> None:
        async with self.ctx.bus.subscribe(Topic.HA_REGISTRY) as sub:
            async for req in sub:
                if req.reply_to:
                    await self.ha_snapshot.respond(self.ctx.bus, req)

    async def _ha_state(self, change: Any) -> None:
        ev = HaState(change.entity_id, change.state, change.old_state, change.attributes,
                     change.at)  # fmt: skip
        await self.ctx.bus.publish(f"{Topic.HA_STATE}.{change.entity_id}", ev.to_payload(),
                                   qos="realtime")  # fmt: skip

    def _muted(self, on: bool) -> None:
        self.satellite.muted = on
        self.log.info("homeassistant: satellite %s", "muted" if on else "unmuted")

    async def _serve_wakes(self) -> None:
        async for det, ev in self.ctx.receive(WakeDetected, code=ErrorCode.BAD_WAKE):
            claim = self.satellite.claim(det)
            if ev.reply_to:
                await self.ctx.bus.reply(ev, claim.to_payload())

    async def _follow_frames(self) -> None:
        topic = f"{Topic.AUDIO_FRAMES}.{self.settings.site}"
        async with self.ctx.bus.subscribe(topic, "realtime") as sub:
            async for ev in sub:
                if isinstance(ev.payload, bytes):
                    self.satellite.frame(ev.payload)
                if self.server.connections:
                    await asyncio.gather(*(c.frames.drain() for c in self.server.connections))

    # -- operator view ------------------------------------------------------------------------
    def status(self) -> HomeAssistantStatus | None:
        if not hasattr(self, "satellite"):
            return None
        sat = self.satellite
        conn = sat.conn
        return HomeAssistantStatus(
            api=self.api,
            ha_connected=conn is not None,
            client=conn.client_info if conn is not None else "",
            runs=sat.counts.get("runs", 0),
            active_wake_words=list(sat.active),
            ha_api=self._api_state(),
            last_run=sat.history[-1] if sat.history else {},
        )

    def _api_state(self) -> str:
        if self.client is None:
            return ""
        return "connected" if self.client.connected.is_set() else self.client.error or "connecting"

    def metrics(self) -> Iterable[Family]:
        if not hasattr(self, "satellite"):
            return
        c = self.satellite.counts
        for key in ("runs", "announcements", "errors", "played", "timer_events"):
            what = f"Satellite {key.replace('_', ' ')}."
            yield Family(f"loomd_homeassistant_{key}_total", "counter", what,
                         [({}, float(c.get(key, 0)))])  # fmt: skip
        yield Family("loomd_homeassistant_connected", "gauge", "HA holds the voice assistant.",
                     [({}, float(self.satellite.conn is not None))])  # fmt: skip
        yield Family("loomd_homeassistant_api_messages_total", "counter", "ESPHome API messages.",
                     [({"dir": "in"}, float(self.server.received)),
                      ({"dir": "out"}, float(self.server.sent))])  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {
            "runs": Command(self._op_runs, "the last N satellite turns with timings", ("n",)),
            "entities": Command(self._op_entities, "HA's areas and exposed entities"),
            "call": Command(
                self._op_call, "call an HA service on an entity", ("service", "entity_id")
            ),
        }

    def _client(self) -> Any:
        if self.client is None:
            raise LoomdError("homeassistant: no [homeassistant] url configured")
        return self.client

    async def _op_entities(self) -> dict[str, Any]:
        snap = await self._client().snapshot()
        return {"areas": {a.id: a.name for a in snap.areas},
                "entities": [{"entity_id": e.entity_id, "name": e.name, "area": e.area_id,
                              "state": e.state} for e in snap.entities]}  # fmt: skip

    async def _op_call(self, service: Any, entity_id: Any) -> dict[str, Any]:
        domain, _, name = str(service).partition(".")
        if not name:
            raise LoomdError(f"call: a service as domain.name, not {service!r}")
        await self._client().call_service(domain, name, target={"entity_id": str(entity_id)})
        return {"called": str(service), "entity_id": str(entity_id)}

    async def _op_runs(self, n: Any = 5) -> dict[str, Any]:
        return {"runs": self.satellite.history[-int(n) :], "counts": dict(self.satellite.counts)}
