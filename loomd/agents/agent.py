"""The plugin author's API: subclass `Agent`, or write a module of `@capability` functions.

    from loomd.agents import Agent, capability

    class Greeter(Agent):
        id = "greeter"
        topics = ("greet.#",)

        async def on_event(self, ctx, event):
            await ctx.reply(event, {"hello": event.payload})

        @capability("greet.say")
        async def say(self, name: str) -> str:
            \"\"\"Greet someone.

            Args:
                name: who to greet
            \"\"\"
            return f"hello {name}"

A plugin may declare `Settings`, a dataclass; its section `[agents.<id>]` is
validated by building it (unknown keys and wrong types are errors naming the key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from loomd.agents.ctx import AgentCtx
    from loomd.bus.envelope import Event

__all__ = ["Agent"]


class Agent:
    """Base class of an agent (subclassing is optional: the runtime duck-types `id`,
    `topics`, `on_event`, `start`, `stop`). A class without an `id` is taken for a base of
    other agents and not run."""

    id: ClassVar[str] = ""
    topics: ClassVar[tuple[str, ...]] = ()
    # The manifest (docs/design/acl.md): with ACL rules in force, an in-process agent may
    # subscribe to `topics` and its inbox, publish on `publishes`, call `calls` (patterns).
    publishes: ClassVar[tuple[str, ...]] = ()
    calls: ClassVar[tuple[str, ...]] = ()
    Settings: ClassVar[type[Any] | None] = None

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    async def start(self, ctx: AgentCtx) -> None:
        """Called before the first event; raising here is a crash (restarted with backoff)."""

    async def on_event(self, ctx: AgentCtx, event: Event) -> None:
        """One event from `topics` or the agent's inbox (`agent.<id>.inbox`)."""

    async def stop(self, ctx: AgentCtx) -> None:
        """Called on a clean stop (not after a crash)."""
