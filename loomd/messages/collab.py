"""The contract net (`AgentContext.contract_net` / `ctx.bid`): a call for proposals (any
payload, event type `cnet.cfp`), the bids answering it, and the award or rejection each
bidder gets. Barriers are in `caps` beside the broker that keeps them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from loomd.errors import LoomdError
from loomd.messages.base import EventType, _Payload


@dataclass(frozen=True)
class Bid(_Payload, type=EventType.CNET_BID):
    """A bid: `{"score": x, "agent": id, ...}` on the wire, the bidder's own keys beside
    them (what `ctx.bid(cfp, score, **info)` sends). The highest score wins by default."""

    score: float
    agent: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {**self.info, "score": self.score, "agent": self.agent}

    @classmethod
    def from_payload(cls, payload: Any) -> Self:
        if not isinstance(payload, dict):
            raise LoomdError(f"Bid: expected a map, got {type(payload).__name__}")
        score, agent = payload.get("score"), payload.get("agent", "")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise LoomdError(f"Bid: score must be a number, got {score!r}")
        if not isinstance(agent, str):
            raise LoomdError(f"Bid: agent must be a string, got {agent!r}")
        info = {k: v for k, v in payload.items() if k not in ("score", "agent")}
        return cls(float(score), agent, info)


@dataclass(frozen=True)
class BidAward(_Payload, type=EventType.CNET_AWARD):
    """To the winner (request/reply: its reply is the result): the call and its own bid."""

    cfp: Any
    bid: dict[str, Any]
    award: bool = True


@dataclass(frozen=True)
class BidReject(_Payload, type=EventType.CNET_REJECT):
    """To every other bidder."""

    award: bool = False
