"""A minimal SDK agent: answers every request on agent.echo.inbox with its payload.

.venv/bin/python examples/echo_agent.py
.venv/bin/python -c 'import asyncio, loomd.sdk
async def m():
    async with loomd.sdk.connect() as bus:
        print((await bus.request("agent.echo.inbox", {"hi": 1}, timeout=5)).payload)
asyncio.run(m())'
"""

import asyncio

import loomd.sdk


async def main() -> None:
    async with loomd.sdk.connect(name="echo") as bus:  # finds the daemon's socket
        inbox = bus.subscribe("agent.echo.inbox", qos="reliable")
        async for request in inbox:  # reconnects across daemon restarts
            await bus.reply(request, {"echo": request.payload})


if __name__ == "__main__":
    asyncio.run(main())
