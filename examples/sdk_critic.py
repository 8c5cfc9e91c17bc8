"""The trio's fourth member, out of process: a critic served over the SDK. The same class
would run as a plugin file; here `run_agent` gives it the same ctx over the socket, and its
capability `critic.review` is offered to the daemon with a lease.

    .venv/bin/python examples/sdk_critic.py
"""

import asyncio

import loomd.sdk
from loomd.agents import Agent, capability
from loomd.agents.sdk import run_agent


class Critic(Agent):
    id = "critic"

    @capability("critic.review")
    def review(self, text: str) -> dict[str, object]:
        """Score a draft: one point per fact line, at most 5."""
        facts = sum(1 for line in text.splitlines() if line.startswith("- "))
        return {"score": min(5, facts), "note": "good" if facts >= 2 else "thin"}


async def main() -> None:
    async with loomd.sdk.connect(name="critic") as client:
        await run_agent(client, Critic())


if __name__ == "__main__":
    asyncio.run(main())
