"""`llm.chat` as a broker capability, so agents (`ctx.call("llm.chat", ...)`), SDK clients
and MCP hosts (when exposed) reach the router like any other provider's function.

The capability publishes a `ChatRequest` on `llm.chat` and waits for the turn's last
`ChatDone`, so the policy, the decision record and the queue are the same as for every other
turn. Its parameters are the `ChatRequest` fields (messages and tools as their payloads);
the result is the `ChatDone` payload (text, tool_calls, route, decision_id, tokens). The
broker's deadline bounds the call; when it passes, the reply subscription closes and the
router cancels the generation (it notices its requester left).
"""

from __future__ import annotations

from typing import Any, Literal

from loomd.agents.broker import ActionBroker, CapabilityError, InvalidParams, LocalProvider
from loomd.agents.capability import capability, specs_of
from loomd.errors import LoomdError
from loomd.messages import ChatRequest

__all__ = ["PROVIDER", "chat_broker"]

PROVIDER = "llm"


class _Chat:
    def __init__(self, bus: Any, timeout_s: float) -> None:
        self.bus = bus
        self.timeout_s = timeout_s

    @capability("llm.chat")
    async def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str = "auto",
        max_tokens: int = 256,
        temperature: float = 0.7,
        json_schema: dict[str, Any] | None = None,
        privacy: Literal["public", "sensitive", "private", "local-only"] | None = None,
        allow_cloud: bool | None = None,
        priority: Literal["voice", "interactive", "background"] = "interactive",
        agent: str = "",
    ) -> dict[str, Any]:
        """One chat turn through the policy router: an answer, or the model's tool calls.

        Args:
            messages: chat messages ({role, content}, assistant tool_calls, tool results)
            tools: tools the model may call ({name, description, parameters})
            tool_choice: auto, none, required, or one tool's name
            max_tokens: at most this many tokens in the answer
            temperature: sampling temperature
            json_schema: answer with JSON that fits this schema (not with tools)
            privacy: public, sensitive, private or local-only
            allow_cloud: may the turn leave the board
            priority: voice, interactive or background
            agent: who asks (per-agent policy defaults)
        """
        from loomd.router.cli import ask

        payload = {
            "messages": messages,
            "tools": tools or [],
            "tool_choice": tool_choice,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "json_schema": json_schema,
            "policy": {"privacy": privacy, "allow_cloud": allow_cloud},
            "priority": priority,
            "agent": agent,
            "stream": False,
        }
        try:
            request = ChatRequest.from_payload(payload)
        except LoomdError as exc:
            raise InvalidParams(str(exc)) from None
        done = await ask(self.bus, request, timeout=self.timeout_s)
        if done.error:
            raise CapabilityError(f"{done.route or 'llm'}: {done.error}")
        return done.to_payload()


def chat_broker(bus: Any, timeout_s: float = 300.0) -> ActionBroker:
    """A broker holding `llm.chat`, for `serve_capabilities`."""
    broker = ActionBroker()
    provider = LocalProvider(PROVIDER)
    for spec, fn in specs_of(_Chat(bus, timeout_s)):
        broker.register(spec, provider)
        provider.add(spec, fn)
    return broker
