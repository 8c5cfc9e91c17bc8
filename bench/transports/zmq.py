"""Raw pyzmq PUB -> proxy -> SUB: the ceiling any ZeroMQ bus is measured against."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection

import zmq

from bench.harness import send_result, wait_go
from bench.workload import HWM, STAMP, PubSpec, Stopper, SubSpec, Tally, publish_for


def raw_proxy(conn: Connection, endpoints: tuple[str, str]) -> None:
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for s in (xsub, xpub):
        s.setsockopt(zmq.SNDHWM, HWM)
        s.setsockopt(zmq.RCVHWM, HWM)
    xsub.bind(endpoints[0])
    xpub.bind(endpoints[1])
    conn.send(("ready", {}))
    zmq.proxy(xsub, xpub)  # forever: the bench stops this process


def raw_pub(conn: Connection, spec: PubSpec) -> None:
    sock = zmq.Context().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(spec.endpoint)
    time.sleep(0.2)  # let the proxy forward the subscription (ZeroMQ slow joiner)
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sent = publish_for(spec, sock.send, spec.topic.encode())
    elapsed = time.perf_counter() - t0
    send_result(conn, cpu0, sent=sent, elapsed_s=elapsed, expect=sent)
    sock.close(linger=0)


def raw_sub(conn: Connection, spec: SubSpec) -> None:
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SUBSCRIBE, spec.pattern.encode())
    sock.connect(spec.endpoint)
    conn.send(("ready", {}))
    tally, stop = Tally(spec), Stopper(conn, spec)
    skip = len(spec.pattern)
    recv = sock.recv
    inspect = spec.latency
    while True:
        try:
            msg = recv(zmq.NOBLOCK)
        except zmq.Again:
            if stop.should_stop(tally):
                break
            sock.poll(20)
            continue
        tally.arrive()
        if inspect:
            now = time.time_ns()
            tally.latency(STAMP.unpack_from(msg, skip)[1], now)
        if not tally.n & 0xFFFF and stop.should_stop(tally):
            break
    conn.send(("result", tally.result(stop)))
    sock.close(linger=0)
