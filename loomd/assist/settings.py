"""`[assist]`: the conversation agent (local intents first, then the model with tools)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loomd.config import Section, Switch, option, switch

__all__ = ["AssistSettings"]


@dataclass(frozen=True)
class AssistSettings(Section):
    SECTION: ClassVar[str] = "assist"

    enabled: Switch = switch()
    # home-assistant-intents' language code (sentences and response templates)
    language: str = option("en", max_len=16)
    # Folder of hassil YAML sentence files (intents: ...); "" = sentences.d beside the config
    sentences_dir: str = option("", max_len=4096)
    # The board's own area: "set the temperature to 21" means this room ("" = the only
    # thermostat's area, if there is one)
    area: str = option("", max_len=64)
    # How close (0-100, rapidfuzz ratio) a misheard name must be to a device or area name
    fuzzy_threshold: float = option(80.0, min=50.0, max=100.0, reload=True)
    # Closed-set rescoring of a voice transcript no sentence takes as heard (no match, a
    # repair, an unknown target): whisper's own decoder scores the home's closest sentences
    # against the clip ([voice.stt] keeps it) and the best is taken if it is within
    # `rescore_margin` (mean log-probability per token) of whisper's own transcript.
    rescore: bool = option(True, reload=True)
    rescore_candidates: int = option(10, min=1, max=50, reload=True)
    rescore_margin: float = option(1.0, min=0.0, max=5.0, reload=True)
    # Conversation memory: turns kept per conversation, forgotten after this idle time
    memory_turns: int = option(6, min=0, max=50, reload=True)
    idle_timeout_s: float = option(300.0, min=5.0, max=86400.0, reload=True)
    # An action that needs a "yes" waits this long for it
    confirm_timeout_s: float = option(20.0, min=2.0, max=600.0, reload=True)
    action_timeout_s: float = option(5.0, min=0.1, max=120.0, reload=True)
    # When no sentence matches: the model with the broker's capabilities as tools
    llm: bool = option(True, reload=True)
    llm_timeout_s: float = option(60.0, min=1.0, max=600.0, reload=True)
    max_tool_rounds: int = option(3, min=1, max=10, reload=True)
    system_prompt: str = option(
        "You are the voice assistant of a home. Use a tool when the user asks for an "
        "action; otherwise answer in one or two short sentences.",
        max_len=4096,
        reload=True,
    )
    # The site whose speaker rings the timers when a turn came without one
    site: str = option("local", max_len=64)
    # How often the capability catalogue is read again (new sentences, new devices)
    refresh_s: float = option(60.0, min=0.5, max=3600.0)
