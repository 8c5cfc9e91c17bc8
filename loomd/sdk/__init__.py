"""The loomd SDK: `async with loomd.sdk.connect() as bus:` publish, subscribe, request, reply."""

from loomd.bus.envelope import Event, QoS
from loomd.sdk.client import Client, Subscription, connect, default_endpoint

__all__ = ["Client", "Event", "QoS", "Subscription", "connect", "default_endpoint"]
