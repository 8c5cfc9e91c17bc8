"""Contract-net manager over the SDK: announce a print job, let the bidders of
examples/agents/bidders.py bid for 0.3 s, award the best, print who did it.

    .venv/bin/python examples/contract_net_manager.py 12
"""

import asyncio
import json
import sys

import loomd.sdk
from loomd.agents.sdk import sdk_ctx


async def main(pages: int) -> None:
    async with loomd.sdk.connect(name="manager") as client:
        ctx = sdk_ctx(client, "manager")
        award = await ctx.contract_net("jobs.print", {"pages": pages}, window=0.3, timeout=5)
        bids = {b.payload["agent"]: round(b.payload["score"], 2) for b in award.bids}
        print(json.dumps({"winner": award.winner, "result": award.result, "bids": bids}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
