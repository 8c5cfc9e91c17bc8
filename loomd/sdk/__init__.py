"""The loomd SDK: `async with loomd.sdk.connect() as bus:` publish, subscribe, request, reply."""

from typing import Any

from loomd.bus.envelope import Event, QoS
from loomd.sdk.client import Client
from loomd.sdk.endpoint import default_endpoint
from loomd.sdk.subscription import Subscription

__all__ = ["Client", "Event", "QoS", "Subscription", "connect", "default_endpoint"]


def connect(endpoint: str | None = None, **kw: Any) -> Client:
    """`async with loomd.sdk.connect() as bus:` — see Client for the options."""
    return Client(endpoint, **kw)
