"""Contract net: three bidders for `jobs.print`. Each bids its free capacity; the manager
(examples/contract_net_manager.py) awards the job to the best bid and gets the result."""

from typing import ClassVar

from loomd.agents import Agent, AgentCtx
from loomd.bus.envelope import Event


class Bidder(Agent):
    topics = ("jobs.print",)
    load: ClassVar[float] = 0.0

    async def on_event(self, ctx: AgentCtx, event: Event) -> None:
        if event.type == "cnet.cfp":
            await ctx.bid(event, score=1.0 - self.load)
        elif event.type == "cnet.award":
            pages = event.payload["cfp"]["pages"]
            await ctx.reply(event, {"printed": pages, "by": self.id})


class Laser(Bidder):
    id = "laser"
    load = 0.7


class Inkjet(Bidder):
    id = "inkjet"
    load = 0.2


class Plotter(Bidder):
    id = "plotter"
    load = 0.5
