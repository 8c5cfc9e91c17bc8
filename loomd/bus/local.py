"""`LocalBus`: the `Bus` API in process, straight onto the broker (no socket, no encoding)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from loomd.bus.acl import EVERYTHING, Caller, Forbidden, Manifest
from loomd.bus.api import Bus, SubSpec, reply_to, request_reply
from loomd.bus.broker import Broker
from loomd.bus.envelope import Event
from loomd.bus.identity import Identity
from loomd.bus.subscriber import Subscriber
from loomd.messages import BusStats, ErrorCode

__all__ = ["LocalBus"]


class LocalBus(Bus[Subscriber]):
    """One part's handle on the in-process broker; `name` is the sender of what it publishes."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        identity: Identity | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.identity = identity or Identity.daemon(name)
        self.manifest = manifest
        self._trusted = self.identity.superuser and manifest is None
        # a superuser's grants never change with the rules: no lookup per publish
        self._fixed = Caller(self.identity, EVERYTHING) if self._trusted else None

    def as_plugin(self, agent_id: str, manifest: Manifest) -> LocalBus:
        """A handle for an in-process plugin: identity `plugin:<id>`, what its manifest
        declares (plus what ACL rules grant it)."""
        return LocalBus(self.broker, agent_id, Identity.plugin(agent_id), manifest)

    @property
    def caller(self) -> Caller:
        # looked up each time (a dict hit): a reloaded ACL applies at once
        return self._fixed or self.broker.acl.caller(self.identity, self.manifest)

    def caller_or_none(self) -> Caller | None:
        """For checks elsewhere (the action broker): None when nothing limits this part."""
        return None if self._trusted else self.caller

    def _forbid(self, what: str) -> None:
        text = f"forbidden: {self.identity.label} may not {what}"
        self.broker.error(ErrorCode.FORBIDDEN, text, client=self.identity.label)
        raise Forbidden(text)

    def _deliver(self, ev: Event, reliable: bool, wait: bool) -> Awaitable[None] | None:
        caller = self.caller
        if not self._trusted and not caller.grants.may_publish(ev.topic):
            self._forbid(f"publish on {ev.topic!r}")
        ev.caller = caller
        if reliable and wait:
            return self.broker.publish_acked(ev)
        self.broker.publish(ev)
        return None

    def _open(self, spec: SubSpec) -> Subscriber:
        # `window` is the socket's flow-control window: in process the queue bound applies.
        pattern = spec.pattern
        if not self._trusted and not self.caller.grants.may_subscribe(pattern):
            self._forbid(f"subscribe to {pattern!r}")
        return self.broker.subscribe(
            pattern,
            spec.qos,
            owner=self.name,
            after_seq=spec.since,
            max_age_ms=spec.max_age_ms,
            classes=spec.classes,
        )

    async def request(
        self, topic: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
    ) -> Event:
        return await request_reply(self, topic, payload, timeout=timeout, **kw)

    async def listeners(self, topic: str) -> int:
        return self.broker.listeners(topic)

    async def stats(self) -> BusStats:
        return self.broker.summary()

    async def reply(self, request: Event, payload: Any = None, **kw: Any) -> Event:
        return await reply_to(self, request, payload, **kw)
