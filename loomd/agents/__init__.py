"""Python agent plugins, the collaboration primitives and the action broker.

What a plugin author imports: `Agent`, `capability`, `CapabilityError`, `CallError`, and the
`AgentCtx` type their handlers receive. See docs/design/agents.md.
"""

from loomd.agents.agent import Agent
from loomd.agents.broker import CallError, CapabilityError, Result
from loomd.agents.capability import capability
from loomd.agents.ctx import AgentCtx, Award, BarrierTimeout, FanoutTimeout

__all__ = [
    "Agent",
    "AgentCtx",
    "Award",
    "BarrierTimeout",
    "CallError",
    "CapabilityError",
    "FanoutTimeout",
    "Result",
    "capability",
]
