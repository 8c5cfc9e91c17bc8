"""Agents and capability providers out of process, over `loomd.sdk.Client`.

    async with loomd.sdk.connect(name="weather") as client:
        await run_agent(client, WeatherAgent())      # the same class a plugin file holds

`run_agent` runs an agent with the same runtime as the daemon (containment, timing) and the
same `AgentCtx`; its `@capability` methods are served to the daemon's action broker with a
lease (`caps.lease.<id>`, renewed every lease/5): if this process dies, the daemon fails its
in-flight calls with `provider_unavailable` as soon as the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from loomd.agents.broker import ActionBroker, LocalProvider, Report, Result
from loomd.agents.capability import CapabilitySpec, specs_of
from loomd.agents.ctx import AgentCtx, SdkBackend
from loomd.agents.direct import (
    IN_PROCESS,
    ProviderServer,
    offer_in_process,
    withdraw_in_process,
)
from loomd.agents.runtime import AgentRunner, Policy
from loomd.bus.envelope import Event, QoS
from loomd.errors import LoomdError
from loomd.heap import freeze_heap
from loomd.messages import (
    CapCode,
    CapInvoke,
    CapsLease,
    CapsRegister,
    CapsRegistered,
    CapsUnregister,
    ErrorCode,
    Topic,
)

__all__ = ["run_agent", "sdk_ctx", "serve_capabilities"]

log = logging.getLogger("loomd.agents.sdk")


def sdk_ctx(client: Any, agent_id: str, settings: Any = None) -> AgentCtx:
    """The `ctx` an in-process agent would get, over a connected `loomd.sdk.Client`."""
    return AgentCtx(agent_id, client, SdkBackend(client), settings=settings)


@contextlib.asynccontextmanager
async def serve_capabilities(
    client: Any, provider_id: str, broker: ActionBroker
) -> AsyncIterator[dict[str, Any]]:
    """Offer every capability in `broker` to the daemon while the block runs. Yields the
    daemon's answer to the registration (`registered`, `refused`, `lease_s`)."""
    # The spec as `CapabilitySpec.to_dict()` gives it (sentences, confirm, ... included).
    caps = [{k: v for k, v in c.items() if k not in ("provider", "kind", "calls")}
            for c in broker.list()]  # fmt: skip
    # The token ties an unregister to this registration: a late `caps.unregister` of an
    # earlier registration (another topic, so no ordering) must not drop this one.
    token = os.urandom(8).hex()
    # One-hop calls (loomd/agents/direct.py): a client of a local daemon serves them on its
    # own socket too; the broker decides who may (its grants), this end checks the grant.
    direct = ProviderServer(provider_id, broker) if _local(client) else None
    endpoint = await direct.start() if direct is not None else ""
    if direct is None and _in_daemon(client):  # the agents' broker calls `broker` straight
        endpoint = offer_in_process(broker)
    body = CapsRegister(provider_id, tuple(caps), token, endpoint).to_payload()
    stop = asyncio.Event()

    def registered(answer: CapsRegistered) -> None:
        if direct is not None:
            direct.set_key(answer.grant_key)

    async def handle(req: Event) -> None:
        try:
            call = CapInvoke.from_event(req)
        except LoomdError as exc:
            r = Result(CapCode.INVALID_PARAMS, error=str(exc))
        else:
            r = await broker.call(call.cap, call.params, timeout=call.timeout or 10.0)
        await client.reply(req, r.to_payload(), wait=False, type=r.TYPE)

    tasks: set[asyncio.Task[None]] = set()
    try:
        async with (
            client.subscribe(f"caps.call.{provider_id}", QoS.RELIABLE) as calls,
            client.subscribe(f"caps.reregister.{provider_id}", QoS.REALTIME) as again,
        ):
            await calls.ready()
            await again.ready()
            reply = await client.request(Topic.CAPS_REGISTER, body, timeout=10.0)
            answer = CapsRegistered.from_event(reply)
            if not answer.ok:
                raise LoomdError(f"the daemon refused provider {provider_id}: {answer.error:.200}")
            registered(answer)
            lease = answer.lease_s or 0.5

            async def serve() -> None:
                async for req in calls:
                    t = asyncio.ensure_future(handle(req))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)

            async def renew() -> None:
                while not stop.is_set():
                    served = direct.take_counts() if direct is not None else {}
                    renewal = CapsLease(served).to_payload() if served else None
                    await client.publish(
                        f"caps.lease.{provider_id}", renewal, qos=QoS.REALTIME, type=CapsLease.TYPE
                    )
                    await asyncio.sleep(lease / 5)

            async def reregister() -> None:
                async for _ in again:
                    log.info("daemon asked provider %s to register again", provider_id)
                    again_reply = await client.request(Topic.CAPS_REGISTER, body, timeout=10.0)
                    with contextlib.suppress(LoomdError):
                        registered(CapsRegistered.from_event(again_reply))

            workers = [asyncio.ensure_future(w()) for w in (serve, renew, reregister)]
            try:
                yield answer.to_payload()
            finally:
                stop.set()
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, *tasks, return_exceptions=True)
                with contextlib.suppress(LoomdError):
                    await CapsUnregister(provider_id, token).publish(client, wait=False)

    finally:
        if direct is not None:
            await direct.close()
        if endpoint.startswith(IN_PROCESS):
            withdraw_in_process(endpoint)


def _local(client: Any) -> bool:
    """A client of a daemon on this box (an ipc endpoint): its callers can reach it."""
    endpoint = getattr(client, "endpoint", None)
    return isinstance(endpoint, str) and endpoint.startswith("ipc://")


def _in_daemon(client: Any) -> bool:
    """A part of the daemon (its `LocalBus` handle): the agents' broker is in this process."""
    from loomd.bus.local import LocalBus

    return isinstance(client, LocalBus)


def _local_broker(agent: Any, agent_id: str) -> ActionBroker:
    broker = ActionBroker()
    prov = LocalProvider(agent_id)
    found = agent.capabilities() if hasattr(agent, "capabilities") else specs_of(agent)
    for spec, fn in found:
        broker.register(spec, prov)
        prov.add(spec, fn)
    return broker


async def run_agent(
    client: Any,
    agent: Any,
    *,
    settings: Any = None,
    policy: Policy | None = None,
    report: Report | None = None,
) -> None:
    """Run `agent` until cancelled, over a connected client: the same lifecycle and
    containment as in the daemon; its capabilities are served with a lease."""
    aid = str(getattr(agent, "id", "") or type(agent).__name__.lower())
    if settings is not None and getattr(agent, "settings", None) is None:
        agent.settings = settings
    ctx = sdk_ctx(client, aid, settings)

    sending: set[asyncio.Future[Any]] = set()

    def publish_error(code: ErrorCode, message: str, details: dict[str, Any]) -> None:
        log.error("%s", message)
        if code in ("agent_error", "agent_crashed"):
            fut = asyncio.ensure_future(
                client.publish("loomd.agent.error", details, qos=QoS.REALTIME, wait=False)
            )
            sending.add(fut)
            fut.add_done_callback(sending.discard)

    broker = _local_broker(agent, aid)
    # The runner registers into its own broker; the served one is `broker`.
    runner = AgentRunner(
        agent, ctx, ActionBroker(), source="sdk", policy=policy or Policy(),
        report=report or publish_error,
    )  # fmt: skip
    async with serve_capabilities(client, aid, broker):
        freeze_heap()  # this process is the agent now: its start stays out of the collector's way
        try:
            await runner.run()
        finally:
            stop = getattr(agent, "stop", None)
            if stop is not None:
                try:
                    await stop(ctx)
                except Exception:
                    log.exception("agent %s: stop raised", aid)


def spec_list(fns: list[tuple[CapabilitySpec, Callable[..., Any]]]) -> ActionBroker:
    """A broker holding plain `@capability` functions, for `serve_capabilities`."""
    broker = ActionBroker()
    prov = LocalProvider("sdk")
    for spec, fn in fns:
        broker.register(spec, prov)
        prov.add(spec, fn)
    return broker
