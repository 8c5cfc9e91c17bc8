"""The ESPHome native API, device side: what Home Assistant's ESPHome integration talks to.

Every message is one of aioesphomeapi's protobuf classes (`aioesphomeapi.api_pb2`), its
type number taken from aioesphomeapi's own table; `frames.py` carries them. The session
part lives here (hello, connect, device info, entities, states, ping, disconnect); the
voice messages go to a `VoiceHandler` (the satellite), the entity commands to the
entities. One `ApiServer` serves any number of clients; HA holds one connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from loomd.homeassistant.frames import FrameError, Frames, open_frames

__all__ = ["ApiConnection", "ApiServer", "DeviceIdentity", "MediaPlayer", "MuteSwitch", "api_pb"]

log = logging.getLogger("loomd.homeassistant.esphome")

API_VERSION = (1, 14)  # device info carries the voice feature flags (1.15 moved them)


def api_pb() -> Any:
    from aioesphomeapi import api_pb2

    return api_pb2


def _types() -> tuple[dict[int, Any], dict[type, int]]:
    from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO

    return MESSAGE_TYPE_TO_PROTO, {cls: n for n, cls in MESSAGE_TYPE_TO_PROTO.items()}


@dataclass(frozen=True)
class DeviceIdentity:
    name: str  # the node name (mDNS host, HA's unique device name)
    friendly_name: str
    mac: str  # HA keys the device by it
    version: str
    voice_flags: int
    suggested_area: str = ""
    encrypted: bool = False


class VoiceHandler(Protocol):
    def connected(self, conn: ApiConnection) -> None: ...

    def disconnected(self, conn: ApiConnection) -> None: ...

    async def on_message(self, conn: ApiConnection, msg: Any) -> None: ...


class Entity:
    key: int
    object_id: str
    name: str

    def list_message(self) -> Any: ...

    def state_message(self) -> Any: ...

    async def command(self, conn: ApiConnection, msg: Any) -> None: ...


class MuteSwitch(Entity):
    """The satellite's mute: while on, a wake word starts nothing."""

    def __init__(self, key: int, on_change: Callable[[bool], None]) -> None:
        self.key, self.object_id, self.name = key, "mute", "Mute"
        self.on = False
        self.on_change = on_change

    def list_message(self) -> Any:
        return api_pb().ListEntitiesSwitchResponse(
            object_id=self.object_id, key=self.key, name=self.name, icon="mdi:microphone-off",
            entity_category=1,
        )  # fmt: skip

    def state_message(self) -> Any:
        return api_pb().SwitchStateResponse(key=self.key, state=self.on)

    async def command(self, conn: ApiConnection, msg: Any) -> None:
        self.on = bool(msg.state)
        self.on_change(self.on)
        conn.server.broadcast(self.state_message())


class MediaPlayer(Entity):
    """What HA plays on the board (announcements, TTS of other pipelines): WAV 16 kHz mono
    s16, the format HA's ffmpeg proxy converts to for us."""

    # HA maps idle, playing, paused, off and on (not ESPHome's "announcing": playing then)
    IDLE, PLAYING, ANNOUNCING = 1, 2, 2

    def __init__(self, key: int, play: Callable[[str, bool], Any], stop: Callable[[], Any]) -> None:
        self.key, self.object_id, self.name = key, "media_player", "Media Player"
        self.state = self.IDLE
        self.volume = 1.0
        self.muted = False
        self.play, self.stop = play, stop

    def list_message(self) -> Any:
        pb = api_pb()
        formats = [
            pb.MediaPlayerSupportedFormat(format="wav", sample_rate=16000, num_channels=1,
                                          purpose=purpose, sample_bytes=2)
            for purpose in (0, 1)  # default, announcement
        ]  # fmt: skip
        # pause, volume set/mute, play media, stop, announce
        features = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 9) | (1 << 12) | (1 << 20)
        return pb.ListEntitiesMediaPlayerResponse(
            object_id=self.object_id, key=self.key, name=self.name, supports_pause=True,
            supported_formats=formats, feature_flags=features,
        )  # fmt: skip

    def state_message(self) -> Any:
        return api_pb().MediaPlayerStateResponse(
            key=self.key, state=self.state, volume=self.volume, muted=self.muted
        )

    def set_state(self, server: ApiServer, state: int) -> None:
        if state != self.state:
            self.state = state
            server.broadcast(self.state_message())

    async def command(self, conn: ApiConnection, msg: Any) -> None:
        if msg.has_volume:
            self.volume = max(0.0, min(1.0, msg.volume))
        if msg.has_command and msg.command in (3, 4):  # mute, unmute
            self.muted = msg.command == 3
        if msg.has_command and msg.command == 2:  # stop
            self.stop()
        if msg.has_media_url and msg.media_url:
            self.play(msg.media_url, bool(msg.has_announcement and msg.announcement))
        conn.server.broadcast(self.state_message())


class ApiConnection:
    def __init__(self, server: ApiServer, frames: Frames, peer: str) -> None:
        self.server, self.frames, self.peer = server, frames, peer
        self.client_info = ""
        self.states = False  # subscribed to entity states
        self.voice = False  # subscribed to the voice assistant (HA's satellite entity)
        self.closed = asyncio.Event()

    def send(self, *msgs: Any) -> None:
        if self.closed.is_set():
            return
        ids = self.server.ids
        self.frames.write([(ids[type(m)], m.SerializeToString()) for m in msgs])
        self.server.sent += len(msgs)


class ApiServer:
    def __init__(self, device: DeviceIdentity, psk: bytes | None, voice: VoiceHandler) -> None:
        self.device, self.psk, self.voice = device, psk, voice
        self.types, self.ids = _types()
        self.entities: list[Entity] = []
        self.connections: set[ApiConnection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.received = self.sent = self.rejected = self.handshake_failures = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ESPHome API on %s:%d (%s)", host, self.port,
                 "Noise" if self.psk else "plaintext")  # fmt: skip

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def broadcast(self, msg: Any) -> None:
        for conn in self.connections:
            if conn.states:
                conn.send(msg)

    def voice_client(self) -> ApiConnection | None:
        """The connection whose satellite entity subscribed to the voice assistant."""
        return next((c for c in self.connections if c.voice), None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = str(writer.get_extra_info("peername"))
        conn: ApiConnection | None = None
        try:
            d = self.device
            frames = await open_frames(reader, writer, self.psk, d.name, d.mac)
            conn = ApiConnection(self, frames, peer)
            self.connections.add(conn)
            await self._session(conn)
        except FrameError as exc:
            self.handshake_failures += 1
            log.warning("ESPHome API: %s: %s", peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if conn is not None:
                conn.closed.set()
                self.connections.discard(conn)
                if conn.voice:
                    self.voice.disconnected(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _session(self, conn: ApiConnection) -> None:
        pb = api_pb()
        while True:
            kind, data = await conn.frames.read()
            self.received += 1
            cls = self.types.get(kind)
            if cls is None:
                self.rejected += 1
                log.debug("ESPHome API: unknown message type %d ignored", kind)
                continue
            try:
                msg = cls.FromString(data)
            except Exception as exc:  # protobuf's DecodeError
                self.rejected += 1
                log.warning("ESPHome API: bad %s from %s: %s", cls.__name__, conn.peer, exc)
                continue
            if isinstance(msg, pb.DisconnectRequest):
                conn.send(pb.DisconnectResponse())
                await conn.frames.drain()
                return
            for reply in self._answer(conn, msg):
                conn.send(reply)
            if isinstance(msg, pb.SwitchCommandRequest | pb.MediaPlayerCommandRequest):
                entity = next((e for e in self.entities if e.key == msg.key), None)
                if entity is not None:
                    await entity.command(conn, msg)
            elif isinstance(msg, pb.SubscribeVoiceAssistantRequest):
                conn.voice = bool(msg.subscribe)
                (self.voice.connected if conn.voice else self.voice.disconnected)(conn)
            elif type(msg).__name__.startswith("VoiceAssistant"):
                await self.voice.on_message(conn, msg)
            await conn.frames.drain()

    def _answer(self, conn: ApiConnection, msg: Any) -> Iterable[Any]:
        pb = api_pb()
        d = self.device
        if isinstance(msg, pb.HelloRequest):
            conn.client_info = msg.client_info
            yield pb.HelloResponse(api_version_major=API_VERSION[0],
                                   api_version_minor=API_VERSION[1],
                                   server_info=f"loomd {d.version}", name=d.name)  # fmt: skip
        elif isinstance(msg, pb.AuthenticationRequest):  # (api passwords are gone; Noise)
            yield pb.AuthenticationResponse(invalid_password=False)
        elif isinstance(msg, pb.PingRequest):
            yield pb.PingResponse()
        elif isinstance(msg, pb.DeviceInfoRequest):
            yield pb.DeviceInfoResponse(
                name=d.name, friendly_name=d.friendly_name, mac_address=d.mac,
                esphome_version="2025.12.0", compilation_time="", model="loomd",
                manufacturer="loomd", project_name="loomd.voice", project_version=d.version,
                voice_assistant_feature_flags=d.voice_flags, suggested_area=d.suggested_area,
                api_encryption_supported=d.encrypted,
            )  # fmt: skip
        elif isinstance(msg, pb.ListEntitiesRequest):
            yield from (e.list_message() for e in self.entities)
            yield pb.ListEntitiesDoneResponse()
        elif isinstance(msg, pb.SubscribeStatesRequest):
            conn.states = True
            yield from (e.state_message() for e in self.entities)
        elif isinstance(msg, pb.GetTimeRequest):
            pass  # a device asks HA for the time; HA never asks us
