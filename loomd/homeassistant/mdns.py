"""The board's services on mDNS, with python-zeroconf: the ESPHome API (`_esphomelib._tcp`,
what HA's ESPHome integration discovers) and the Wyoming server (`_wyoming._tcp`, what HA's
Wyoming integration discovers). One `Announcer` for both.

`interfaces` limits zeroconf to the given addresses (the tests use ["127.0.0.1"], so no
packet leaves the machine); empty = every interface. The addresses announced are those
interfaces, else every non-loopback IPv4 address of the board."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

from loomd.homeassistant.esphome import DeviceIdentity

__all__ = ["SERVICE", "WYOMING", "Announcer", "announce_wyoming", "esphome_announcer"]

SERVICE = "_esphomelib._tcp.local."
WYOMING = "_wyoming._tcp.local."
_ANY = ("", "0.0.0.0", "::")


class Announcer:
    """One service instance `<name>.<type>` on mDNS while started."""

    def __init__(
        self,
        service: str,
        name: str,
        port: int,
        interfaces: Sequence[str] = (),
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.service, self.name, self.port = service, name, port
        self.interfaces = tuple(interfaces)
        self.properties = dict(properties or {})
        self._zc: Any = None
        self.info: Any = None

    async def start(self) -> None:
        from zeroconf import (  # type: ignore[attr-defined]
            InterfaceChoice,
            IPVersion,
            get_all_addresses,
        )
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        ifaces: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        listed = self.interfaces or tuple(
            a for a in get_all_addresses() if not a.startswith("127.")
        )
        addresses = [socket.inet_aton(a) for a in listed if ":" not in a]
        self.info = AsyncServiceInfo(
            self.service,
            f"{self.name}.{self.service}",
            port=self.port,
            properties=self.properties,
            server=f"{self.name}.local.",
            addresses=addresses or None,
        )
        await self._zc.async_register_service(self.info)

    async def stop(self) -> None:
        if self._zc is None:
            return
        if self.info is not None:
            await self._zc.async_unregister_service(self.info)
        await self._zc.async_close()
        self._zc = None


def esphome_announcer(device: DeviceIdentity, port: int, interfaces: Sequence[str]) -> Announcer:
    """The board as an ESPHome device, with the TXT records HA's integration reads."""
    props = {
        "version": "2025.12.0",  # the ESPHome API level we speak, for HA's checks
        "mac": device.mac.replace(":", "").lower(),
        "platform": "loomd",
        "board": "loomd",
        "network": "ethernet",
        "friendly_name": device.friendly_name,
        "project_name": "loomd.voice",
        "project_version": device.version,
    }
    if device.encrypted:
        props["api_encryption"] = "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
    return Announcer(SERVICE, device.name, port, interfaces, props)


async def announce_wyoming(
    name: str, host: str, port: int, interfaces: Sequence[str] = ()
) -> Announcer:
    """Announce a Wyoming server listening on `host:port` (started; `await a.stop()`).
    Bound to one address, it is announced there only (127.0.0.1: on lo, nothing leaves the
    board); bound to every address, on `interfaces` (or all of them)."""
    if host not in _ANY and not interfaces:
        interfaces = (host,)
    label = "".join(c if c.isalnum() or c == "-" else "-" for c in name)[:63]
    a = Announcer(WYOMING, label, port, interfaces)
    await a.start()
    return a
