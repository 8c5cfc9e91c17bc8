"""Tool calls on the local model: the router's grammar-constrained turns against raw
llama-cpp-python with the same grammar, same model, threads and messages, one run.

    .venv/bin/python bench/tools.py [--quick] [--model PATH] [--threads N]

A fixture catalogue (6 tools) and a set of commands no sentence template covers (each with
the tool it should reach, or none for a question to answer). Command by command, interleaved
so both see the same background load: the router (a Host with state, bus and llm in this
process; `llm.chat` with tools, tool_choice auto) and raw `create_chat_completion` with
`LlamaGrammar.from_json_schema` of the same schema over the same rendered messages; plus raw
without any grammar, to show what the grammar is for. Keys:
`llm_tool_valid_rate` (outputs that are a valid call or an answer; must be 1.0),
`llm_tool_accuracy` (the right tool, or an answer for a question), `llm_first_call_ms`
(p50 from the request to the ChatDone carrying the call), and the raw figures with ratios.
Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import small_models_dir  # noqa: E402
from loomd.messages import ChatMessage, ChatRequest, ToolSpec  # noqa: E402
from loomd.router.tools import (  # noqa: E402
    CALL_TOKENS,
    OutputReader,
    grammar_schema,
    parse_output,
    render,
)

DEFAULT_MODEL = small_models_dir() / "llm" / "SmolLM2-135M-Instruct.gguf"


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


TOOLS = (
    ToolSpec(
        "lights_set", "Turn a light on or off, or set its brightness",
        _obj({"name": {"type": "string"}, "on": {"type": "boolean"},
              "brightness": {"type": "integer"}}, ["name", "on"]),
        "lights.set@1",
    ),
    ToolSpec(
        "climate_set", "Set the target temperature of a room",
        _obj({"room": {"type": "string"}, "celsius": {"type": "number"}}, ["room", "celsius"]),
        "climate.set@1",
    ),
    ToolSpec(
        "timer_start", "Start a timer",
        _obj({"minutes": {"type": "integer"}, "label": {"type": "string"}}, ["minutes"]),
        "timer.start@1",
    ),
    ToolSpec("time_now", "Tell the current time", _obj({}, []), "time.now@1"),
    ToolSpec(
        "shopping_add", "Add an item to the shopping list",
        _obj({"item": {"type": "string"}}, ["item"]), "shopping.add@1",
    ),
    ToolSpec(
        "music_play", "Play music by an artist or of a genre",
        _obj({"query": {"type": "string"}}, ["query"]), "music.play@1",
    ),
)  # fmt: skip
SYSTEM = "You are the voice assistant of a home. Use a tool when one fits."
# Commands no hassil template covers; the tool each should reach ("" = answer, no tool).
COMMANDS = [
    ("It's getting dark in the kitchen, can you help", "lights_set"),
    ("Make the living room a bit cosier, 22 degrees", "climate_set"),
    ("Remind me in ten minutes that the pasta is done", "timer_start"),
    ("We are out of oat milk", "shopping_add"),
    ("Put on some jazz", "music_play"),
    ("How late is it", "time_now"),
    ("Kill the lights in the bedroom", "lights_set"),
    ("I'm freezing in the office", "climate_set"),
    ("Give me a 3 minute countdown for the eggs", "timer_start"),
    ("Note that we need batteries", "shopping_add"),
    ("I want to hear Miles Davis", "music_play"),
    ("Do you know what hour it is", "time_now"),
    ("Why is the sky blue", ""),
    ("Thanks, that's all", ""),
    ("Bathroom light at half brightness", "lights_set"),
    ("Warm the nursery to 21", "climate_set"),
    ("Start a quarter hour timer", "timer_start"),
    ("Add coffee beans to the list", "shopping_add"),
    ("Something relaxing please, like piano music", "music_play"),
    ("Who wrote Hamlet", ""),
]
MAX_TOKENS = 64


def _valid(out: Any) -> bool:
    return not out.error and (out.call is not None or isinstance(out.answer, str))


def _chosen(out: Any) -> str:
    return out.call.name if out.call is not None else ""


def raw_turn(llm: Any, grammar: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
    """Streamed like the router's turn, with the same budgets: a call may run to
    CALL_TOKENS, an answer stops after MAX_TOKENS of its own tokens."""
    began = time.perf_counter()
    reader = OutputReader()
    pieces: list[str] = []
    finish = ""
    answer_tokens = 0
    stream = llm.create_chat_completion(
        messages, grammar=grammar, max_tokens=CALL_TOKENS if grammar else MAX_TOKENS,
        temperature=0.0, stream=True,
    )  # fmt: skip
    for chunk in stream:
        choice = chunk["choices"][0]
        text = choice["delta"].get("content") or ""
        finish = choice.get("finish_reason") or finish
        pieces.append(text)
        reader.feed(text)
        answer_tokens += reader.kind == "answer"
        if answer_tokens >= MAX_TOKENS:
            finish = "length"
            break
    stream.close()
    ms = (time.perf_counter() - began) * 1000
    text = "".join(pieces)
    out = parse_output(text, TOOLS, cut=finish == "length")
    return {"ms": ms, "valid": _valid(out), "tool": _chosen(out), "text": text[:80]}


async def router_turn(bus: Any, text: str) -> dict[str, Any]:
    from loomd.router.cli import ask

    req = ChatRequest(
        (ChatMessage("system", SYSTEM), ChatMessage("user", text)),
        tools=TOOLS,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=False,
        priority="interactive",
    )
    began = time.perf_counter()
    done = await ask(bus, req, timeout=600)
    ms = (time.perf_counter() - began) * 1000
    valid = not done.error
    for call in done.tool_calls:
        tool = next((t for t in TOOLS if t.name == call.name), None)
        valid = valid and tool is not None and _schema_ok(tool, call.arguments)
    tool = done.tool_calls[0].name if done.tool_calls else ""
    return {"ms": ms, "valid": valid, "tool": tool, "error": done.error}


def _schema_ok(tool: ToolSpec, args: dict[str, Any]) -> bool:
    import jsonschema

    return not list(jsonschema.Draft202012Validator(tool.parameters).iter_errors(args))


async def run(model: Path, threads: int, commands: list[tuple[str, str]]) -> dict[str, Any]:
    import llama_cpp

    from loomd.host import Host
    from loomd.settings import load_config

    llm = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=threads, verbose=False)
    grammar = llama_cpp.LlamaGrammar.from_json_schema(
        json.dumps(grammar_schema(TOOLS, "auto")), verbose=False
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "loomd.toml"
        cfg.write_text(
            f'[paths]\nruntime_dir = "{tmp}/run"\nstate_dir = "{tmp}/state"\n'
            f'cache_dir = "{tmp}/cache"\n[llm]\nenabled = true\nmodel = "{model}"\n'
            f"threads = {threads}\nload_at_start = true\n"
        )
        async with Host(load_config(cfg), names=["state", "bus", "llm"]) as host:
            bus = host.get("llm").ctx.bus
            msgs = render((ChatMessage("system", SYSTEM), ChatMessage("user", "hi")), TOOLS, "auto")
            await asyncio.to_thread(raw_turn, llm, grammar, msgs)  # warm both up
            await router_turn(bus, "hi")
            for i, (text, want) in enumerate(commands):
                msgs = render(
                    (ChatMessage("system", SYSTEM), ChatMessage("user", text)), TOOLS, "auto"
                )
                if i % 2:  # alternate who goes first: a shared box's load drifts
                    ours = await router_turn(bus, text)
                    raw = await asyncio.to_thread(raw_turn, llm, grammar, msgs)
                else:
                    raw = await asyncio.to_thread(raw_turn, llm, grammar, msgs)
                    ours = await router_turn(bus, text)
                free = await asyncio.to_thread(raw_turn, llm, None, msgs)
                rows.append({"text": text, "want": want, "raw": raw, "loomd": ours, "free": free})
                print(f"{text[:44]:46} want {want or '-':13} loomd {ours['tool'] or '-':13} "
                      f"{ours['ms']:7.0f} ms  raw {raw['tool'] or '-':13} {raw['ms']:7.0f} ms  "
                      f"no-grammar valid {free['valid']}", flush=True)  # fmt: skip
    llm.close()
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    commands = COMMANDS[:6] if a.quick else COMMANDS
    rows = asyncio.run(run(a.model, a.threads, commands))["rows"]

    def rate(side: str, key: str) -> float:
        return round(sum(1 for r in rows if r[side][key]) / len(rows), 3)

    def accuracy(side: str) -> float:
        return round(sum(1 for r in rows if r[side]["tool"] == r["want"]) / len(rows), 3)

    def call_ms(side: str) -> float:
        xs = [r[side]["ms"] for r in rows if r[side]["tool"]]
        return round(statistics.median(xs), 1) if xs else 0.0

    ours, raw = call_ms("loomd"), call_ms("raw")
    from bench.llm import rss_mb

    res = {
        "model": a.model.name,
        "threads": a.threads,
        "commands": len(rows),
        "llm_tool_valid_rate": rate("loomd", "valid"),
        "llm_tool_accuracy": accuracy("loomd"),
        "llm_first_call_ms": ours,
        "raw_tool_valid_rate": rate("raw", "valid"),
        "raw_tool_accuracy": accuracy("raw"),
        "raw_first_call_ms": raw,
        "first_call_ratio": round(ours / raw, 2) if raw else 0.0,
        "same_choice_as_raw": rate_same(rows),
        "nogrammar_valid_rate": rate("free", "valid"),
        "calls": sum(1 for r in rows if r["loomd"]["tool"]),
        "bench_peak_rss_mb": round(rss_mb(), 1),
    }
    print(f"valid {res['llm_tool_valid_rate']} (raw with the grammar "
          f"{res['raw_tool_valid_rate']}, without {res['nogrammar_valid_rate']}); right tool "
          f"{res['llm_tool_accuracy']} (raw {res['raw_tool_accuracy']}); first call p50 "
          f"{ours} ms vs raw {raw} ms (x{res['first_call_ratio']})")  # fmt: skip
    print(json.dumps(res))


def rate_same(rows: list[dict[str, Any]]) -> float:
    """How often the router chose what raw llama-cpp-python chose (both greedy)."""
    return round(sum(1 for r in rows if r["loomd"]["tool"] == r["raw"]["tool"]) / len(rows), 3)


if __name__ == "__main__":
    main()
