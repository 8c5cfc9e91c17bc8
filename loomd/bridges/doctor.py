"""The MQTT bridge's doctor check: the configured broker answers a CONNECT (TLS and
credentials included)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

from loomd.doctor.context import Check, Context, Verdict, fail, ok, skip

CONNACK_TEXT = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x84: "unsupported protocol version",
    0x85: "client id rejected",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
}


def _mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_packet(
    client_id: str, *, v5: bool, keepalive: int, username: str = "", password: bytes = b""
) -> bytes:
    """A CONNECT with a clean session (nothing left on the broker)."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password else 0)
    var = _mqtt_str("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        var += b"\x00"  # no properties
    body = var + _mqtt_str(client_id)
    if username:
        body += _mqtt_str(username)
        if password:
            body += _mqtt_str(password)
    return b"\x10" + _varint(len(body)) + body


def mqtt_probe(
    s: Any, timeout: float, *, password: bytes = b"", tls: ssl.SSLContext | None = None
) -> int:
    """CONNECT to the broker `s` ([mqtt] settings) and return the CONNACK code (0 = accepted).
    Raises OSError/ssl.SSLError/TimeoutError on a network or TLS failure."""
    sock = socket.create_connection((s.host, s.port), timeout=timeout)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=s.host)
        v5 = str(s.protocol) == "5"
        # Our own client id: reusing the daemon's would make the broker drop the daemon.
        cid = f"loomd-doctor-{os.getpid()}"
        sock.sendall(
            mqtt_connect_packet(cid, v5=v5, keepalive=10, username=s.username, password=password)
        )
        head = _recv(sock, 2)
        if head[0] != 0x20:
            raise OSError(f"not an MQTT CONNACK (first byte 0x{head[0]:02x})")
        length, shift, byte = head[1] & 0x7F, 7, head[1]
        while byte & 0x80:
            byte = _recv(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
        body = _recv(sock, length)
        code = body[1]
        if code == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return code
    finally:
        sock.close()


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("the broker closed the connection")
        out += chunk
    return out


def check_mqtt(ctx: Context) -> Verdict:
    s = ctx.section("mqtt")
    if s is None or not s.enabled:
        return skip("MQTT bridge is disabled ([mqtt] enabled)")
    where = f"{'mqtts' if s.tls else 'mqtt'}://{s.host}:{s.port}"
    cfg = ctx.config_path or "loomd.toml"
    # The files first: a missing password or CA file is not the broker's fault.
    try:
        password = Path(s.password_file).read_bytes().strip() if s.password_file else b""
        tls = None
        if s.tls:
            tls = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                tls.load_cert_chain(s.cert_file, s.key_file or None)
    except PermissionError as exc:
        return fail(f"may not read {exc.filename}", "sudo loomctl doctor (the file is loomd's)")
    except OSError as exc:
        return fail(
            f"{exc.filename or '[mqtt] TLS files'}: {exc.strerror or exc}",
            f"fix [mqtt] password_file/ca_file/cert_file/key_file in {cfg}",
        )
    try:
        code = mqtt_probe(s, ctx.mqtt_timeout_s, password=password, tls=tls)
    except ssl.SSLError as exc:
        return fail(
            f"{where}: TLS failed: {exc.reason or exc}",
            f"check [mqtt] ca_file/cert_file/key_file and host in {cfg}",
        )
    except TimeoutError:
        return fail(
            f"{where}: no answer within {ctx.mqtt_timeout_s:g} s",
            f"check the broker's address ([mqtt] host/port in {cfg}) and firewall",
        )
    except OSError as exc:
        return fail(
            f"{where}: {exc.strerror or exc}",
            f"start the broker (sudo systemctl start mosquitto) or fix [mqtt] host/port in {cfg}",
        )
    if code:
        why = CONNACK_TEXT.get(code, f"code 0x{code:02x}")
        return fail(
            f"{where}: broker refused: {why}",
            f"check [mqtt] username/password_file in {cfg} against the broker",
        )
    return ok(f"{where} accepted a connection" + (f" as {s.username}" if s.username else ""))


CHECKS = (Check("mqtt", check_mqtt),)
