"""Routing ids (issue 19, hostile gaps): a vanished client's id presented again by another
connection does not inherit its session (its subscriptions, its deliveries, its grants),
and libzmq's id counter starts from an unpredictable value (C `rand()` seeded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import zmq

from loomd.bus import wire
from loomd.bus.cbor import CONTROL_OUT
from tests.conftest import LoomdProcess

REPO = Path(__file__).resolve().parents[2]

# Another process presents the vanished client's id and asks for pings and its events.
THIEF = """
import json, sys, time, zmq
from loomd.bus import wire
from loomd.bus.cbor import CONTROL_OUT
# Until the daemon's libzmq has dropped the victim's pipe it refuses a second connection
# with the same id (no answer at all): knock until one is let in, then ask.
deadline = time.monotonic() + 10
while True:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, bytes.fromhex(sys.argv[2]))
    s.connect(sys.argv[1])
    s.send(wire.pack_control({"op": "ping", "rid": 7}))
    if s.poll(200) or time.monotonic() > deadline:
        break
    s.close()
s.send(wire.pack_control({"op": "unsub", "sid": 1, "rid": 8}))
poller = zmq.Poller()
poller.register(s, zmq.POLLIN)
got = []
while poller.poll(2000):
    got.append(wire.unpack_control(s.recv(), CONTROL_OUT))
print(json.dumps(got))
"""


def _ask(sock: zmq.Socket[bytes], msg: dict[str, object]) -> dict[str, object]:
    sock.send(wire.pack_control(msg))
    assert sock.poll(5000), f"no answer to {msg}"
    return wire.unpack_control(sock.recv(), CONTROL_OUT)


def test_a_vanished_clients_id_is_not_inherited(daemon: LoomdProcess) -> None:
    ident = b"\x00" + os.urandom(4)
    victim = zmq.Context.instance().socket(zmq.DEALER)
    victim.setsockopt(zmq.LINGER, 0)
    victim.setsockopt(zmq.ROUTING_ID, ident)
    victim.connect(daemon.endpoint)
    hello = _ask(victim, {"op": "hello", "rid": 1, "name": "victim", "secret": os.urandom(16)})
    assert hello["ok"], hello
    assert _ask(victim, {"op": "sub", "rid": 2, "sid": 1, "pattern": "demo.#"})["ok"]
    victim.close()  # gone; its session lingers until the sweep, and a thief comes at once
    r = subprocess.run(
        [sys.executable, "-c", THIEF, daemon.endpoint, ident.hex()],
        capture_output=True, text=True, timeout=30, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip())
    assert got, "the thief got no answer at all"
    assert all(m.get("ok") is False and "another connection" in str(m.get("error")) for m in got)
    # the session kept its subscription: the thief could not unsubscribe it
    stats = subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(daemon.socket), "status", "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "session_peer" in stats.stdout, stats.stdout[-2000:]
