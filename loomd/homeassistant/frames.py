"""The ESPHome native API's frame layer, device side: plaintext and Noise.

Plaintext: `0x00`, varint length, varint message type, protobuf bytes.
Noise (`Noise_NNpsk0_25519_ChaChaPoly_SHA256`, the key a base64 PSK): frames are `0x01`,
16-bit big-endian length, body. The client opens with an empty frame and a handshake
frame; the device answers with its hello (chosen protocol, name, MAC) and the handshake
reply; after that each body is encrypted `type (16 bit) | length (16 bit) | protobuf`.

The Noise state machine is noiseprotocol's (`NoiseConnection` as responder) and the
transport ciphers are aioesphomeapi's wrappers, so the byte layout matches the client HA
runs. The messages themselves are aioesphomeapi's protobuf classes (see `esphome.py`)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from loomd.errors import LoomdError

__all__ = ["FrameError", "Frames", "NoiseFrames", "PlainFrames", "open_frames", "varint"]

# Noise frames carry 16-bit lengths; plaintext lengths are capped the same way, so a
# hostile length cannot make the reader buffer megabytes.
MAX_FRAME = 0xFFFF
_PROLOGUE = b"NoiseAPIInit\x00\x00"
_MAC_FAILURE = b"\x01Handshake MAC failure"


class FrameError(LoomdError):
    """The peer broke the frame layer (bad preamble, oversized frame, failed handshake)."""


class Frames(Protocol):
    async def read(self) -> tuple[int, bytes]:
        """The next message: (type, protobuf bytes). Raises FrameError or EOF errors."""
        ...

    def write(self, messages: list[tuple[int, bytes]]) -> None: ...

    async def drain(self) -> None: ...


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


async def _read_varint(reader: asyncio.StreamReader) -> int:
    result = shift = 0
    for _ in range(5):
        byte = (await reader.readexactly(1))[0]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
    raise FrameError("varint longer than 5 bytes")


class PlainFrames:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> tuple[int, bytes]:
        preamble = (await self.reader.readexactly(1))[0]
        if preamble != 0x00:
            raise FrameError(f"preamble {preamble:#x} on a plaintext port (an encrypted client?)")
        return await self.read_rest()

    async def read_rest(self) -> tuple[int, bytes]:
        length = await _read_varint(self.reader)
        kind = await _read_varint(self.reader)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes")
        return kind, await self.reader.readexactly(length) if length else b""

    def write(self, messages: list[tuple[int, bytes]]) -> None:
        self.writer.writelines(
            b"\x00" + varint(len(data)) + varint(kind) + data for kind, data in messages
        )

    async def drain(self) -> None:
        await self.writer.drain()


class NoiseFrames:
    """Device side of the Noise session; `handshake()` must finish before read/write."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, psk: bytes
    ) -> None:
        self.reader, self.writer, self.psk = reader, writer, psk
        self._enc: Any = None
        self._dec: Any = None

    async def _frame(self) -> bytes:
        head = await self.reader.readexactly(3)
        if head[0] != 0x01:
            raise FrameError(f"preamble {head[0]:#x} on an encrypted port (a plaintext client?)")
        return await self.reader.readexactly((head[1] << 8) | head[2])

    def _send(self, body: bytes) -> None:
        self.writer.write(bytes((0x01, len(body) >> 8, len(body) & 0xFF)) + body)

    async def handshake(self, name: str, mac: str) -> None:
        # The backend with ESPHome's reusable ChaCha20 cipher, as the client uses it.
        from aioesphomeapi._frame_helper.noise_encryption import (
            ESPHOME_NOISE_BACKEND,
            NOISE_PROTOCOL_NAME,
        )
        from aioesphomeapi.noise import DecryptCipher, EncryptCipher
        from noise.connection import NoiseConnection  # type: ignore[import-untyped]

        await self._frame()  # the client hello: an empty frame
        self._send(b"\x01" + name.encode() + b"\x00" + mac.encode() + b"\x00")
        msg = await self._frame()
        if not msg or msg[0] != 0x00:
            raise FrameError("bad Noise handshake frame")
        proto = NoiseConnection.from_name(NOISE_PROTOCOL_NAME, backend=ESPHOME_NOISE_BACKEND)
        proto.set_as_responder()
        proto.set_psks(self.psk)
        proto.set_prologue(_PROLOGUE)
        proto.start_handshake()
        try:
            proto.read_message(msg[1:])
        except Exception as exc:  # cryptography's InvalidTag: the client holds another key
            self._send(_MAC_FAILURE)
            await self.writer.drain()
            raise FrameError(f"Noise handshake failed (wrong key?): {type(exc).__name__}") from None
        self._send(b"\x00" + bytes(proto.write_message()))
        await self.writer.drain()
        self._enc = EncryptCipher(proto.noise_protocol.cipher_state_encrypt)
        self._dec = DecryptCipher(proto.noise_protocol.cipher_state_decrypt)

    async def read(self) -> tuple[int, bytes]:
        body = self._dec.decrypt(await self._frame())
        if len(body) < 4:
            raise FrameError(f"decrypted frame of {len(body)} bytes")
        return (body[0] << 8) | body[1], bytes(body[4:])

    def write(self, messages: list[tuple[int, bytes]]) -> None:
        for kind, data in messages:
            head = bytes((kind >> 8, kind & 0xFF, len(data) >> 8, len(data) & 0xFF))
            self._send(self._enc.encrypt(head + data))

    async def drain(self) -> None:
        await self.writer.drain()


async def open_frames(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    psk: bytes | None,
    name: str,
    mac: str,
) -> Frames:
    """The session's frame layer. A client speaking the other mode gets what an ESPHome
    device sends it, so HA says the right thing ("requires encryption" / "wrong key")."""
    if psk is None:
        return PlainFrames(reader, writer)
    first = await reader.readexactly(1)
    if first[0] == 0x00:
        # A plaintext client on an encrypted device: an encrypted-style frame makes
        # aioesphomeapi raise RequiresEncryptionAPIError (HA then asks for the key).
        writer.write(b"\x01\x00\x00")
        await writer.drain()
        raise FrameError("a plaintext client on the encrypted API (it needs the key)")
    frames = NoiseFrames(reader, writer, psk)
    reader_feed = _Prefixed(reader, first)
    frames.reader = reader_feed  # type: ignore[assignment]
    await frames.handshake(name, mac)
    frames.reader = reader
    return frames


class _Prefixed:
    """A reader that yields `prefix` before the stream (the byte peeked to pick the mode)."""

    def __init__(self, reader: asyncio.StreamReader, prefix: bytes) -> None:
        self.reader, self.prefix = reader, prefix

    async def readexactly(self, n: int) -> bytes:
        head, self.prefix = self.prefix[:n], self.prefix[n:]
        return head + (await self.reader.readexactly(n - len(head)) if n > len(head) else b"")
