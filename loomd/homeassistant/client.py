"""Home Assistant's WebSocket API, client side: HA's areas, devices and the entities it
exposes to voice assistants, its state changes as they happen, and service calls.

One connection (aiohttp), authenticated with a long-lived token; `connect()` raises a
`LoomdError` that says why (unreachable, bad token) and `run()` keeps the connection,
reconnecting with capped backoff and jitter; while it is down `status` says so and calls
fail at once with a clear error (a dead HA never holds a turn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loomd.errors import LoomdError
from loomd.messages import HaArea, HaDevice, HaEntity, HaSnapshot

__all__ = ["HaClient", "HaStateChange"]

log = logging.getLogger("loomd.homeassistant.client")


@dataclass(frozen=True)
class HaStateChange:
    entity_id: str
    state: str
    old_state: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.time() when it was received


StateHandler = Callable[[HaStateChange], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
# HA's events that change what `snapshot()` returns
REGISTRY_EVENTS = ("area_registry_updated", "device_registry_updated", "entity_registry_updated")


class HaClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.connected = asyncio.Event()
        self.error = ""  # why it is not connected (for status)
        self.reconnects = 0
        self._http: Any = None
        self._ws: Any = None
        self._n = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._on_state: StateHandler | None = None
        self._on_registry: Hook | None = None

    # -- connection --------------------------------------------------------------------------
    async def connect(self) -> None:
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession()
        ws_url = self.url.replace("http", "ws", 1) + "/api/websocket"
        try:
            async with asyncio.timeout(self.timeout_s):
                ws = await self._http.ws_connect(ws_url, heartbeat=30)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise LoomdError(f"Home Assistant at {self.url} unreachable: {exc}") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                hello = await ws.receive_json()
                if hello.get("type") != "auth_required":
                    raise LoomdError(f"{self.url} is no Home Assistant WebSocket API: {hello}")
                await ws.send_json({"type": "auth", "access_token": self.token})
                res = await ws.receive_json()
        except (TimeoutError, TypeError, ValueError) as exc:
            await ws.close()
            raise LoomdError(f"Home Assistant at {self.url}: no handshake ({exc})") from None
        if res.get("type") != "auth_ok":
            await ws.close()
            raise LoomdError(f"Home Assistant refused the token: {res.get('message', res)}")
        self._ws, self.error = ws, ""
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.connected.set()
        if self._on_state is not None:
            await self.call({"type": "subscribe_events", "event_type": "state_changed"})
        if self._on_registry is not None:
            for event in REGISTRY_EVENTS:
                await self.call({"type": "subscribe_events", "event_type": event})

    async def close(self) -> None:
        self.connected.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(
        self,
        on_state: StateHandler | None = None,
        backoff: tuple[float, float] = (0.5, 30.0),
        on_registry: Hook | None = None,
    ) -> None:
        """Stay connected (reconnecting with capped backoff + jitter), feeding `on_state`;
        `on_registry` runs after each (re)connect and each change of HA's registries (from
        the reader: it must not wait on HA itself; the component sets a flag)."""
        self._on_state, self._on_registry = on_state, on_registry
        delay = backoff[0]
        while True:
            if not self.connected.is_set():
                try:
                    await self.connect()
                    delay = backoff[0]
                except LoomdError as exc:
                    self.error = f"{exc}; trying again in {delay:.1f} s"
                    log.warning("homeassistant: %s", self.error)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, backoff[1])
                    continue
                if on_registry is not None:
                    await on_registry()
            assert self._reader is not None
            with contextlib.suppress(Exception):
                await asyncio.shield(self._reader)
            self.connected.clear()
            self.reconnects += 1

    async def _read(self) -> None:
        import aiohttp

        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = msg.json()
                for item in data if isinstance(data, list) else [data]:
                    await self._dispatch(item)
        finally:
            self.connected.clear()
            self.error = self.error or "the connection to Home Assistant closed"
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(LoomdError("the connection to Home Assistant closed"))
            self._pending.clear()

    async def _dispatch(self, item: dict[str, Any]) -> None:
        if item.get("type") == "event":
            ev = item.get("event", {})
            if ev.get("event_type") in REGISTRY_EVENTS and self._on_registry is not None:
                await self._on_registry()
                return
            if ev.get("event_type") == "state_changed" and self._on_state is not None:
                d = ev.get("data", {})
                new, old = d.get("new_state") or {}, d.get("old_state") or {}
                change = HaStateChange(d.get("entity_id", ""), new.get("state", ""),
                                       old.get("state", ""), new.get("attributes", {}),
                                       time.time())  # fmt: skip
                try:
                    await self._on_state(change)
                except Exception:
                    log.exception("homeassistant: a state handler failed")
            return
        fut = self._pending.pop(item.get("id", -1), None)
        if fut is not None and not fut.done():
            if item.get("success", True):
                fut.set_result(item.get("result"))
            else:
                err = item.get("error", {})
                fut.set_exception(LoomdError(f"Home Assistant: {err.get('code')}: "
                                             f"{err.get('message')}"))  # fmt: skip

    async def call(self, msg: dict[str, Any]) -> Any:
        """One WebSocket command; its result (raises LoomdError at once when HA is away)."""
        if not self.connected.is_set() or self._ws is None:
            raise LoomdError(f"Home Assistant is not connected ({self.error or 'not yet'})")
        self._n += 1
        n = self._n
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[n] = fut
        try:
            await self._ws.send_json({"id": n, **msg})
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError:
            raise LoomdError(f"Home Assistant did not answer {msg['type']} in "
                             f"{self.timeout_s:g} s") from None  # fmt: skip
        finally:
            self._pending.pop(n, None)

    # -- what HA knows -----------------------------------------------------------------------
    async def running(self) -> bool:
        """HA's core has started (its integrations set up): `get_config`'s state."""
        cfg = await self.call({"type": "get_config"})
        return isinstance(cfg, dict) and cfg.get("state") == "RUNNING"

    async def snapshot(self) -> HaSnapshot:
        """Areas, devices and the entities HA exposes to voice assistants, with states."""
        areas = await self.call({"type": "config/area_registry/list"})
        devices = await self.call({"type": "config/device_registry/list"})
        entities = await self.call({"type": "config/entity_registry/list"})
        exposed = await self.call({"type": "homeassistant/expose_entity/list"})
        states = {s["entity_id"]: s for s in await self.call({"type": "get_states"})}
        shown = {eid for eid, a in exposed.get("exposed_entities", {}).items()
                 if a.get("conversation")}  # fmt: skip
        dev_area = {d["id"]: d.get("area_id") or "" for d in devices}
        out = []
        for e in entities:
            eid = e["entity_id"]
            if eid not in shown:
                continue
            st = states.get(eid, {})
            name = st.get("attributes", {}).get("friendly_name") or e.get("name") or eid
            device = e.get("device_id") or ""
            area = e.get("area_id") or dev_area.get(device, "")
            aliases = tuple(a for a in e.get("aliases") or () if isinstance(a, str))
            out.append(HaEntity(eid, name, area, device, aliases, st.get("state", "")))
        return HaSnapshot(
            tuple(HaArea(a["area_id"], a["name"], tuple(a.get("aliases") or ())) for a in areas),
            tuple(
                HaDevice(
                    d["id"], d.get("name_by_user") or d.get("name") or "", d.get("area_id") or ""
                )
                for d in devices
            ),
            tuple(out),
        )

    async def call_service(
        self, domain: str, service: str, data: dict[str, Any] | None = None,
        target: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        msg: dict[str, Any] = {"type": "call_service", "domain": domain, "service": service,
                               "service_data": data or {}}  # fmt: skip
        if target:
            msg["target"] = target
        return await self.call(msg)
