"""The `[llm]` section: the local model, the routing policy defaults and the cloud."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from loomd.config import IP_TEXT, Section, Switch, is_ip, option, switch

__all__ = [
    "DEFAULT_MODEL",
    "PRIVACY",
    "CloudSettings",
    "LlmSettings",
    "PolicySettings",
    "model_file",
]

PRIVACY = ("public", "sensitive", "private", "local-only")


def _check_agents(value: Mapping[str, str]) -> tuple[str, Any, str] | None:
    for agent, privacy in value.items():
        if privacy not in PRIVACY:
            return (f'."{agent}"', privacy, "one of " + ", ".join(PRIVACY))
    return None


@dataclass(frozen=True)
class PolicySettings(Section):
    """Defaults for requests that leave a policy field unset ([llm.policy])."""

    privacy: str = option("sensitive", choices=PRIVACY, reload=True)
    latency_budget_ms: int = option(10000, min=1, max=3600000, reload=True)
    cost_cap: float = option(0.01, min=0.0, max=1000.0, reload=True)
    quality_threshold: float = option(0.0, min=0.0, max=1.0, reload=True)
    allow_cloud: bool = option(False, reload=True)
    # Per-agent privacy default (agent name = level), over `privacy` above; a request's
    # own policy still wins.
    agents: Mapping[str, str] = option(
        factory=lambda: MappingProxyType({}), check=_check_agents, reload=True
    )


@dataclass(frozen=True)
class CloudSettings(Section):
    """An OpenAI-compatible endpoint ([llm.cloud]); the key never lives in this file."""

    base_url: str = option("", max_len=512)
    model: str = option("", max_len=128)
    key_name: str = option("llm-cloud-key", max_len=128)
    key_env: str = option("LOOMD_LLM_CLOUD_KEY", max_len=128)
    price_in_per_1k: float = option(0.0, min=0.0, max=1000.0, reload=True)
    price_out_per_1k: float = option(0.0, min=0.0, max=1000.0, reload=True)
    timeout_s: float = option(30.0, min=0.1, max=600.0, reload=True)
    retries: int = option(2, min=0, max=10, reload=True)
    breaker_failures: int = option(3, min=1, max=100, reload=True)
    breaker_open_s: float = option(60.0, min=1.0, max=86400.0, reload=True)
    # How a JSON schema is asked for: OpenAI's "json_schema", or "json_object" with a
    # schema (llama.cpp's server, which answers 500 to the other form).
    schema_style: str = option("json_schema", choices=("json_schema", "json_object"))
    daily_cap: float = option(1.0, min=0.0, max=100000.0, reload=True)
    monthly_cap: float = option(10.0, min=0.0, max=1000000.0, reload=True)


DEFAULT_MODEL = "llm/SmolLM2-135M-Instruct.gguf"


def model_file(model: str, models_dir: Path) -> Path | None:
    """The GGUF file `[llm] model` names ("" = none), relative names under the models dir."""
    if not model:
        return None
    path = Path(model)
    return path if path.is_absolute() else models_dir / path


@dataclass(frozen=True)
class LlmSettings(Section):
    SECTION: ClassVar[str] = "llm"

    enabled: Switch = switch()
    # Relative to [paths] models_dir, where `loomctl models fetch` puts the default one.
    model: str = option(DEFAULT_MODEL, max_len=4096)
    context: int = option(2048, min=64, max=1048576)
    # 0 = chosen per generation from measured tokens/s under the current load.
    threads: int = option(0, min=0, max=256)
    gpu_layers: int = option(0, min=0, max=1000)
    load_at_start: bool = option(True)
    idle_unload_s: float = option(600.0, min=0.0, max=604800.0, reload=True)
    queue_max: int = option(16, min=1, max=10000, reload=True)
    max_tokens: int = option(512, min=1, max=1048576, reload=True)
    # OpenAI-compatible endpoint at http://<http_bind>:<http_port>/v1; 0 = off.
    http_port: int = option(0, min=0, max=65535)
    http_bind: str = option("127.0.0.1", valid=is_ip, expected=IP_TEXT)
    # Browser origins allowed at the endpoint besides loopback ones.
    http_origins: tuple[str, ...] = option(factory=tuple)
    decisions_kept: int = option(1000, min=1, max=1000000, reload=True)
    policy: PolicySettings = option(factory=PolicySettings)
    cloud: CloudSettings = option(factory=CloudSettings)
