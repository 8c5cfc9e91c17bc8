"""The `[agents]` section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loomd.config import Section, option

__all__ = ["AgentsSettings"]


@dataclass(frozen=True)
class AgentsSettings(Section):
    SECTION: ClassVar[str] = "agents"
    TABLES: ClassVar[str] = "agent"  # [agents.<id>] tables: one per agent

    enabled: bool = option(True, reload=True)
    # Plugin directories; empty = /etc/loomd/agents.d (as root) and <state_dir>/agents.d.
    dirs: tuple[str, ...] = option(factory=tuple)
    entry_points: bool = option(True)
    reload_interval_s: float = option(1.0, min=0.0, max=3600.0, reload=True)
    crash_limit: int = option(5, min=1, max=1000, reload=True)
    crash_window_s: float = option(60.0, min=1.0, max=86400.0, reload=True)
    backoff_max_s: float = option(30.0, min=0.1, max=3600.0, reload=True)
    handler_timeout_s: float = option(30.0, min=0.01, max=86400.0, reload=True)
    slow_handler_ms: float = option(100.0, min=1.0, max=60000.0, reload=True)
    call_timeout_s: float = option(10.0, min=0.01, max=3600.0, reload=True)
    idempotency_ttl_s: float = option(86400.0, min=1.0, max=31536000.0, reload=True)
    provider_lease_s: float = option(0.5, min=0.05, max=60.0, reload=True)
    # One-hop calls: how long a caller may call an SDK provider straight on the broker's
    # grant (also how long a changed ACL takes to reach a caller holding one); 0: every
    # call goes through the broker.
    grant_ttl_s: float = option(2.0, min=0.0, max=3600.0, reload=True)
    # Per agent: [agents.<id>], `enabled` plus the keys of the plugin's Settings.
    agent: Mapping[str, Any] = option(factory=dict)
