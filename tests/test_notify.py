from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loomd.notify import Notifier, watchdog_loop

DEADLINE = 2.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real datagram socket playing systemd's part."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(DEADLINE)
        yield sock, path


def recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_ready_status_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("bus bound on /run/loomd/bus.sock")
    assert recv(sock) == b"READY=1\nSTATUS=bus bound on /run/loomd/bus.sock"
    assert n.ready()
    assert recv(sock) == b"READY=1"
    assert n.status("3 agents\nrunning")  # a newline must not start a new assignment
    assert recv(sock) == b"STATUS=3 agents running"
    assert n.stopping("draining")
    assert recv(sock) == b"STOPPING=1\nSTATUS=draining"
    assert n.watchdog()
    assert recv(sock) == b"WATCHDOG=1"
    assert n.extend_timeout(2.5)
    assert recv(sock) == b"EXTEND_TIMEOUT_USEC=2500000"
    assert n.send("FDSTORE=1", "FDNAME=x")
    assert recv(sock) == b"FDSTORE=1\nFDNAME=x"


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", recv(sock))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_abstract_socket() -> None:
    name = f"loomd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert recv(sock) == b"READY=1\nSTATUS=ok"


def test_without_a_manager_sending_is_a_quiet_no_op(tmp_path: Path) -> None:
    absent = Notifier({})
    assert not absent.enabled
    assert not absent.ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.enabled
    assert not gone.ready("x")  # ENOENT is logged at debug, never raised
    assert not gone.watchdog()
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval() == expected


def test_watchdog_loop_pings_repeatedly(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            watchdog_loop(Notifier({"NOTIFY_SOCKET": path}), 0.01, lambda: True)
        )
        try:
            async with asyncio.timeout(DEADLINE):
                return [await loop.sock_recv(sock, 64) for _ in range(3)]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) == [b"WATCHDOG=1"] * 3


def test_watchdog_loop_withholds_pings_while_unhealthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        calls = 0
        third_call = asyncio.Event()

        def healthy() -> bool:
            nonlocal calls
            calls += 1
            if calls == 3:
                third_call.set()
            if calls == 2:
                raise RuntimeError("a broken check counts as unhealthy")
            return calls > 3

        notifier = Notifier({"NOTIFY_SOCKET": path})
        task = asyncio.create_task(watchdog_loop(notifier, 0.01, healthy))
        try:
            async with asyncio.timeout(DEADLINE):
                await third_call.wait()
                with pytest.raises(BlockingIOError):
                    sock.recv(64)  # three unhealthy rounds: nothing was sent
                assert await loop.sock_recv(sock, 64) == b"WATCHDOG=1"  # recovered
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
