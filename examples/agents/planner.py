"""Planner: the trio's lead. A goal on `team.goal` -> facts from the researcher (a
capability), a draft from the writer (a request to its inbox), a review from the critic (a
capability served by an SDK agent, examples/sdk_critic.py, if it runs) -> the answer, also
kept in the planner's own state.

    loomctl pub team.goal '"solar"'     # or request it and read the reply
"""

from loomd.agents import Agent, AgentCtx, CallError
from loomd.bus.envelope import Event


class Planner(Agent):
    id = "planner"
    topics = ("team.goal",)

    async def on_event(self, ctx: AgentCtx, event: Event) -> None:
        goal = str(event.payload)
        facts = await ctx.call("research.find", topic=goal, timeout=5)
        draft = (await ctx.request(
            "agent.writer.inbox", {"goal": goal, "facts": facts}, timeout=5
        )).payload  # fmt: skip
        try:
            review = await ctx.call("critic.review", text=draft, timeout=5)
        except CallError as exc:  # the critic is an SDK agent: it may not be running
            review = {"score": None, "note": exc.code}
        done = int(await ctx.state.get("done", 0)) + 1
        await ctx.state.put("done", done)
        ctx.log.info("goal %r answered (%d so far)", goal, done)
        answer = {"goal": goal, "text": draft, "review": review, "answered": done}
        if event.reply_to:
            await ctx.reply(event, answer)
        await ctx.publish("team.result", answer)
