"""Hot-path send/receive for multipart messages.

pyzmq's `send_multipart`/`recv_multipart` cost several times the libzmq call
itself (Python-level flag enums, sugar wrappers); calling the Cython base methods
with plain int flags sends about 6x and receives about 1.4x faster (measured in
bench/bus.py's raw numbers). Both raise `zmq.Again` like the originals.
"""

from __future__ import annotations

from typing import Any

import zmq

_Base: Any = zmq.Socket.__mro__[1]  # the Cython socket class under the sugar
_send = _Base.send
_recv = _Base.recv
NOBLOCK = 1
SNDMORE = 2


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send a multipart message without blocking (atomic: all frames or zmq.Again)."""
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], NOBLOCK | SNDMORE)
    _send(sock, frames[last], NOBLOCK)


def send_frame(sock: zmq.Socket[bytes], frame: bytes) -> None:
    _send(sock, frame, NOBLOCK)


def recv_frame(sock: zmq.Socket[bytes]) -> bytes:
    """Receive a single-frame message (what loomd's DEALER clients get)."""
    data: bytes = _recv(sock, NOBLOCK)
    return data


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Receive one whole multipart message without blocking (or raise zmq.Again)."""
    frame = _recv(sock, NOBLOCK, False)
    out = [frame.bytes]
    while frame.more:
        frame = _recv(sock, NOBLOCK, False)
        out.append(frame.bytes)
    return out


def recv_message(sock: zmq.Socket[bytes]) -> tuple[list[bytes], Any]:
    """Like `recv_frames`, and the first `zmq.Frame` too (its metadata: `Peer-Address`,
    `User-Id`), read only when a new client shows up."""
    first = frame = _recv(sock, NOBLOCK, False)
    out = [frame.bytes]
    while frame.more:
        frame = _recv(sock, NOBLOCK, False)
        out.append(frame.bytes)
    return out, first


def socket_fd(sock: zmq.Socket[bytes]) -> int:
    """The socket's notification fd (edge-triggered: re-check `readable` after any op)."""
    return int(sock.getsockopt(zmq.FD))


def readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def writable(sock: zmq.Socket[bytes]) -> bool:
    return bool(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT)
