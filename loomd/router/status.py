"""What the operator sees of the `llm` component: its status block and its metric
families (`loomctl status`, the status page, `/metrics`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loomd.component import StatusBlock
from loomd.metrics import Family
from loomd.router.cloud import CloudClient

__all__ = ["LlmStatus", "cloud_line", "families"]


@dataclass(frozen=True)
class LlmStatus(StatusBlock):
    model: str
    loaded: bool
    problem: str
    tps: float
    ttft_ms: float
    confidence: float
    queue: int
    generations: int
    cancelled: int
    decisions: dict[str, int]
    cloud: str
    gpu_layers: int = 0  # offloaded to the GPU by the loaded model (0: all on the CPU)
    http: str = ""  # the OpenAI-compatible endpoint: where, and whether tokens are needed

    def lines(self) -> list[str]:
        state = "loaded" if self.loaded else "not loaded"
        if self.gpu_layers:
            state += f", {self.gpu_layers} layers on the GPU"
        out = [f"model {self.model or '-'} ({state})"]
        if self.problem:
            out.append(f"problem: {self.problem}")
        out.append(
            f"{self.tps:.1f} tok/s, first token {self.ttft_ms:.0f} ms, confidence "
            f"{self.confidence:.2f}, {self.queue} queued, {self.generations} generations "
            f"({self.cancelled} cancelled)"
        )
        out.append("routes: " + (", ".join(f"{k}={v}" for k, v in self.decisions.items()) or "-"))
        out.append(f"cloud: {self.cloud}")
        if self.http:
            out.append(f"http: {self.http}")
        return out


def cloud_line(cl: CloudClient | None) -> str:
    if cl is None:
        return "not configured"
    c = cl.counts
    return (
        f"circuit {cl.breaker.state}, spent {cl.ledger.today():.4f} today / "
        f"{cl.ledger.month():.4f} this month, {c['requests']} calls, {c['errors']} failed, "
        f"{c['refused']} refused by policy"
    )


def families(
    routes: Mapping[str, int], st: Mapping[str, Any], cloud: CloudClient | None, bad_requests: int
) -> Iterable[Family]:
    yield Family(
        "loomd_llm_decisions_total",
        "counter",
        "Routing decisions by route.",
        [({"route": r}, float(n)) for r, n in routes.items()],
    )
    yield Family(
        "loomd_llm_tokens_per_second", "gauge", "Moving average of local decode speed.",
        [({}, float(st.get("tps", 0.0)))],
    )  # fmt: skip
    yield Family(
        "loomd_llm_generations_total", "counter", "Local generations run.",
        [({}, float(st.get("generations", 0)))],
    )  # fmt: skip
    if cloud is not None:
        cl = cloud
        yield Family(
            "loomd_llm_cloud_requests_total",
            "counter",
            "Cloud calls by outcome (refused = policy kept them on the board).",
            [({"outcome": k}, float(v)) for k, v in cl.counts.items()],
        )
        yield Family(
            "loomd_llm_cloud_spend",
            "gauge",
            "Cloud spend so far (UTC day and month).",
            [({"period": "day"}, cl.ledger.today()), ({"period": "month"}, cl.ledger.month())],
        )
        yield Family(
            "loomd_llm_cloud_circuit_open",
            "gauge",
            "1 while the cloud circuit breaker is open.",
            [({}, 1.0 if cl.breaker.state == "open" else 0.0)],
        )
    yield Family(
        "loomd_llm_bad_requests_total", "counter", "Chat requests refused as malformed.",
        [({}, float(bad_requests))],
    )  # fmt: skip
