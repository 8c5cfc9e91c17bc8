"""The board on mDNS as an ESPHome device (`_esphomelib._tcp`), with python-zeroconf.

`interfaces` limits zeroconf to the given addresses (the tests use ["127.0.0.1"], so no
packet leaves the machine); empty = every interface."""

from __future__ import annotations

import socket
from typing import Any

from loomd.homeassistant.esphome import DeviceIdentity

__all__ = ["SERVICE", "Announcer"]

SERVICE = "_esphomelib._tcp.local."


class Announcer:
    def __init__(self, device: DeviceIdentity, port: int, interfaces: tuple[str, ...]) -> None:
        self.device, self.port, self.interfaces = device, port, interfaces
        self._zc: Any = None
        self.info: Any = None

    async def start(self) -> None:
        from zeroconf import (  # type: ignore[attr-defined]
            InterfaceChoice,
            IPVersion,
            get_all_addresses,
        )
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        d = self.device
        ifaces: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        listed = self.interfaces or tuple(
            a for a in get_all_addresses() if not a.startswith("127.")
        )
        addresses = [socket.inet_aton(a) for a in listed if ":" not in a]
        props = {
            "version": "2025.12.0",  # the ESPHome API level we speak, for HA's checks
            "mac": d.mac.replace(":", "").lower(),
            "platform": "loomd",
            "board": "loomd",
            "network": "ethernet",
            "friendly_name": d.friendly_name,
            "project_name": "loomd.voice",
            "project_version": d.version,
        }
        if d.encrypted:
            props["api_encryption"] = "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
        self.info = AsyncServiceInfo(
            SERVICE,
            f"{d.name}.{SERVICE}",
            port=self.port,
            properties=props,
            server=f"{d.name}.local.",
            addresses=addresses or None,
        )
        await self._zc.async_register_service(self.info)

    async def stop(self) -> None:
        if self._zc is None:
            return
        if self.info is not None:
            await self._zc.async_unregister_service(self.info)
        await self._zc.async_close()
