"""The routing decision: a pure function of the request, the policy and measured facts.

`decide()` does no I/O and reads no clock, so every rule is tested exhaustively (a
property test over random facts and policies) and costs microseconds (bench/llm.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loomd.messages import ChatRequest, Policy
from loomd.router.settings import PolicySettings

__all__ = ["Decision", "Facts", "Resolved", "Route", "decide", "resolve"]

# Privacy levels that never leave the board, whatever else the policy says.
ON_BOARD = frozenset({"private", "local-only"})
# Above this CPU temperature the board throttles: local estimates are doubled.
HOT_C = 80.0


class Route(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    HYBRID = "hybrid"
    DENY = "deny"


@dataclass(frozen=True)
class Resolved:
    """A policy with every field filled (request over agent over config defaults)."""

    privacy: str
    latency_budget_ms: int
    cost_cap: float
    quality_threshold: float
    allow_cloud: bool

    @property
    def cloud_allowed(self) -> bool:
        return self.allow_cloud and self.privacy not in ON_BOARD


def resolve(policy: Policy, defaults: PolicySettings, agent: str = "") -> Resolved:
    """Fill `policy`'s unset fields: the agent's default privacy, then `[llm.policy]`."""

    def pick(name: str) -> Any:
        value = getattr(policy, name)
        if value is None and name == "privacy" and agent in defaults.agents:
            return defaults.agents[agent]
        return getattr(defaults, name) if value is None else value

    return Resolved(
        privacy=str(pick("privacy")),
        latency_budget_ms=int(pick("latency_budget_ms")),
        cost_cap=float(pick("cost_cap")),
        quality_threshold=float(pick("quality_threshold")),
        allow_cloud=bool(pick("allow_cloud")),
    )


@dataclass(frozen=True)
class Facts:
    """What the router knows, each field measured (see loomd/router/facts.py)."""

    local_available: bool = False  # a model is configured and fits (loaded or loadable)
    local_loaded: bool = False
    local_tps: float = 0.0  # moving average of decode tokens/s; 0 = not measured yet
    local_ttft_ms: float = 0.0  # moving average of time to first token
    local_confidence: float = 0.0  # moving average of exp(mean token logprob), 0..1
    local_gpu: bool = False  # layers offloaded to a GPU (a CUDA build and gpu_layers > 0)
    load_ms: float = 0.0  # what loading the model took last time
    queue_depth: int = 0  # generations waiting for the local model
    cloud_configured: bool = False
    cloud_state: str = "none"  # none | closed | open | half-open (circuit breaker)
    cloud_tps: float = 40.0
    cloud_ttft_ms: float = 800.0
    cloud_quality: float = 0.9
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    spend_today: float = 0.0
    spend_month: float = 0.0
    daily_cap: float = 0.0
    monthly_cap: float = 0.0
    cpu_temp_c: float | None = None
    cpu_pressure: float = 0.0  # % of time some task waited for a CPU (avg10)
    mem_available_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str
    est_latency_ms: float
    est_cost: float
    confidence: float
    rule: str  # the name of the rule that fired (for `loomctl route explain`)


def prompt_tokens(request: ChatRequest) -> int:
    """A cheap estimate (about 4 characters a token, plus the template's overhead); the
    tools' names, descriptions and schemas ride in the prompt too."""
    tools = sum(
        (len(t.name) + len(t.description) + len(str(t.parameters))) // 4 + 8 for t in request.tools
    )
    return sum(len(m.content) // 4 + 4 for m in request.messages) + tools


def local_latency_ms(request: ChatRequest, facts: Facts) -> float:
    tps = facts.local_tps or 20.0  # before the first measurement: a slow board's figure
    ttft = facts.local_ttft_ms or 500.0
    # CPU pressure is the share of time runnable tasks waited: decode slows by about that.
    tps = max(tps * max(0.1, 1.0 - facts.cpu_pressure / 100.0), 0.01)
    one = ttft + request.max_tokens * 1000.0 / tps
    if facts.cpu_temp_c is not None and facts.cpu_temp_c >= HOT_C:
        one *= 2.0
    wait = facts.queue_depth * one  # the queue ahead runs one generation at a time
    cold = 0.0 if facts.local_loaded else facts.load_ms or 1000.0
    return wait + cold + one


def cloud_latency_ms(request: ChatRequest, facts: Facts) -> float:
    return facts.cloud_ttft_ms + request.max_tokens * 1000.0 / max(facts.cloud_tps, 1.0)


def cloud_cost(request: ChatRequest, facts: Facts) -> float:
    return (
        prompt_tokens(request) * facts.price_in_per_1k + request.max_tokens * facts.price_out_per_1k
    ) / 1000.0


def decide(request: ChatRequest, policy: Resolved, facts: Facts) -> Decision:
    """Pick a route. Rules in order; the first that fires wins and names itself."""
    local_ms = local_latency_ms(request, facts)
    conf = facts.local_confidence
    cost = cloud_cost(request, facts)

    def local(rule: str, why: str) -> Decision:
        return Decision(Route.LOCAL, why, local_ms, 0.0, conf, rule)

    def deny(rule: str, why: str) -> Decision:
        return Decision(Route.DENY, why, 0.0, 0.0, 0.0, rule)

    if policy.privacy in ON_BOARD:
        if facts.local_available:
            return local("privacy", f"privacy {policy.privacy}: stays on the board")
        return deny("privacy-no-local", f"privacy {policy.privacy} and no local model")
    if not policy.allow_cloud:
        if facts.local_available:
            return local("no-cloud", "policy does not allow the cloud")
        return deny("no-route", "no local model and policy does not allow the cloud")
    cloud_why = _cloud_unusable(request, policy, facts, cost)
    if cloud_why:
        if facts.local_available:
            return local("cloud-unusable", f"{cloud_why}: local")
        return deny("cloud-unusable", f"{cloud_why} and no local model")
    cloud_ms = cloud_latency_ms(request, facts)
    if not facts.local_available:
        return Decision(
            Route.CLOUD, "no local model", cloud_ms, cost, facts.cloud_quality, "no-local"
        )
    if conf < policy.quality_threshold:
        if local_ms <= policy.latency_budget_ms and request.priority == "voice":
            # a spoken turn takes one answer (one ChatDone): the quick one
            return local("quality-voice", f"local confidence {conf:.2f} is low, but voice "
                         "takes the quick answer")  # fmt: skip
        if request.tools:
            # a tool call is acted on once: one answer, from the better model
            return Decision(
                Route.CLOUD,
                f"local confidence {conf:.2f} < {policy.quality_threshold:.2f}: a tool "
                "turn takes one answer, the cloud's",
                cloud_ms,
                cost,
                facts.cloud_quality,
                "quality-tools",
            )
        if local_ms <= policy.latency_budget_ms:
            return Decision(
                Route.HYBRID,
                f"local confidence {conf:.2f} < {policy.quality_threshold:.2f}: "
                "local answer now, cloud refinement after",
                local_ms,
                cost,
                conf,
                "quality-hybrid",
            )
        return Decision(
            Route.CLOUD,
            f"local confidence {conf:.2f} < {policy.quality_threshold:.2f} and local too slow",
            cloud_ms,
            cost,
            facts.cloud_quality,
            "quality",
        )
    # Only public requests go out to save time; sensitive ones go out only when the local
    # model cannot serve them (above) or its answer falls short of the quality threshold.
    if policy.privacy == "public" and local_ms > policy.latency_budget_ms and cloud_ms < local_ms:
        return Decision(
            Route.CLOUD,
            f"local est {local_ms:.0f} ms > budget {policy.latency_budget_ms} ms, "
            f"cloud est {cloud_ms:.0f} ms",
            cloud_ms,
            cost,
            facts.cloud_quality,
            "latency",
        )
    return local("local-first", "local fits the policy")


def _cloud_unusable(request: ChatRequest, policy: Resolved, facts: Facts, cost: float) -> str:
    if not facts.cloud_configured:
        return "no cloud configured"
    if facts.cloud_state == "open":
        return "cloud circuit open"
    if cost > policy.cost_cap:
        return f"cloud cost {cost:.4f} > cap {policy.cost_cap:.4f}"
    if facts.daily_cap and facts.spend_today + cost > facts.daily_cap:
        return f"daily cloud cap {facts.daily_cap:.2f} reached"
    if facts.monthly_cap and facts.spend_month + cost > facts.monthly_cap:
        return f"monthly cloud cap {facts.monthly_cap:.2f} reached"
    return ""
