"""The `[state]` section: LMDB map size, commit window, journal retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loomd.config import Section, option

__all__ = ["StateSettings"]


@dataclass(frozen=True)
class StateSettings(Section):
    SECTION: ClassVar[str] = "state"

    map_size_mb: int = option(64, min=1, max=1048576)
    max_map_size_mb: int = option(1024, min=1, max=1048576, at_least="map_size_mb")
    commit_window_ms: float = option(0.0, min=0.0, max=1000.0)
    journal_max_mb: int = option(64, min=1, max=1048576)
    journal_max_age_s: int = option(86400, min=1, max=31536000)
    namespace_max_mb: int = option(16, min=1, max=1048576, reload=True)
    kv_max_mb: int = option(256, min=1, max=1048576, reload=True)
    identity_max_mb: int = option(64, min=1, max=1048576, reload=True)
