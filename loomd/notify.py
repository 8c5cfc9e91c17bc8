"""sd_notify(3) without libsystemd: the protocol is one datagram of KEY=VALUE lines.

systemd passes the socket in $NOTIFY_SOCKET (a path, or `@name` for the
abstract namespace) and, with WatchdogSec=, the deadline in $WATCHDOG_USEC.
Sending never raises: a daemon must not die because its supervisor is away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_loop"]

log = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    """The sendto() address for $NOTIFY_SOCKET, or None if it is not a unix socket."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    # e.g. "vsock:..." (systemd in a VM) is not supported; treat as absent.
    return None


class Notifier:
    """Talks to the service manager; a no-op when not started by systemd with Type=notify."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.debug("unsupported NOTIFY_SOCKET %r: notifications disabled", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self.dropped = 0  # messages the socket did not take

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; True if it was handed to the socket."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            # Non-blocking: a service manager that stopped reading must not stall the loop;
            # the message is dropped and counted instead.
            flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            with socket.socket(socket.AF_UNIX, flags) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            self.dropped += 1
            log.debug("sd_notify %r failed: %s", lines, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self) -> bool:
        # Type=notify-reload (systemd 253+) needs MONOTONIC_USEC to tell this
        # reload apart from an earlier one; older systemd ignores the field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (EXTEND_TIMEOUT_USEC, systemd 236+)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of WatchdogSec=, or None if the watchdog is off."""
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # meant for another process (e.g. our parent)
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        # Pinging at half the deadline leaves room for one late tick.
        return usec / 2_000_000 if usec > 0 else None


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _check(healthy: Callable[[], bool]) -> bool:
    try:
        return bool(healthy())
    except Exception:
        # A broken health check must not kill the loop silently: count it as unhealthy.
        log.exception("health check failed")
        return False


async def watchdog_loop(
    notifier: Notifier,
    interval: float,
    healthy: Callable[[], bool],
    why: Callable[[], list[str]] | None = None,
) -> None:
    """Ping WATCHDOG=1 every `interval` seconds while `healthy()` says so.

    The ping is sent from the event loop itself, so a blocked loop stops
    pinging and systemd restarts the daemon: that is the point.
    """
    was_healthy = True
    while True:
        ok = _check(healthy)
        if ok:
            notifier.watchdog()
        elif was_healthy:
            reasons = "; ".join(why()) if why is not None else ""
            log.warning(
                "unhealthy: withholding watchdog pings%s", f" ({reasons})" if reasons else ""
            )
        if ok and not was_healthy:
            log.info("healthy again: watchdog pings resumed")
        was_healthy = ok
        await asyncio.sleep(interval)
