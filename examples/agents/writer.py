"""Writer: turns a goal and its facts into a short text; asked on its inbox."""

from typing import Any

from loomd.agents import Agent, AgentCtx
from loomd.bus.envelope import Event


class Writer(Agent):
    id = "writer"

    async def on_event(self, ctx: AgentCtx, event: Event) -> None:
        req: dict[str, Any] = event.payload
        lines = [f"# {req['goal'].capitalize()}", *(f"- {fact}" for fact in req["facts"])]
        await ctx.reply(event, "\n".join(lines))
