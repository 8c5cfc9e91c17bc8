"""An SDK agent in its own process (for the kill -9 test): serves `slow.sleep` and
`sdk.echo`, and announces each call it starts on `test.provider.started`."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from loomd.agents import Agent, capability
from loomd.agents.sdk import run_agent
from loomd.sdk import Client


class Provider(Agent):
    id = "sdkprov"
    topics = ("test.sdkprov",)

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    async def on_event(self, ctx, event):  # type: ignore[no-untyped-def]
        await ctx.reply(event, "sdk agent here")

    @capability("slow.sleep")
    async def sleep(self, secs: float) -> str:
        await self.client.publish("test.provider.started", secs)
        await asyncio.sleep(secs)
        return "slept"

    @capability("sdk.echo")
    async def echo(self, text: str) -> str:
        return text


async def main(endpoint: str) -> None:
    async with Client(endpoint, name="sdkprov") as client:
        await run_agent(client, Provider(client))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
