"""A board's Curve key pair and the authorized-keys folder of a peer link (`peers`).

The key pair is made at first start in `<state_dir>/peers/` (the secret mode 0600); the
listener accepts the public keys of `<name>.key` files in its authorized-keys folder, like
ssh's authorized_keys (a bare z85 line, or pyzmq's certificate format).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import zmq

__all__ = ["load_or_make_keys", "read_authorized"]

_Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def load_or_make_keys(d: Path) -> tuple[bytes, bytes]:
    """This board's Curve key pair (public, secret), made on first use, files mode 0600."""
    secret_file, public_file = d / "curve.secret", d / "curve.key"
    if secret_file.exists():
        secret = secret_file.read_bytes().strip()
        public = zmq.curve_public(secret)
        return public, secret
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.curve_keypair()
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    public_file.write_bytes(public + b"\n")
    return public, secret


def read_authorized(d: Path) -> dict[bytes, str]:
    """public key (z85) -> name, from `<name>.key` files holding the key (a bare z85 line,
    or pyzmq's certificate format `public-key = "..."`)."""
    out: dict[bytes, str] = {}
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.key")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "secret" in line:
                continue
            m = _Z85_KEY.search(line)
            if m:
                out[m.group(0).encode()] = f.stem
                break
    return out
