"""The cloud: llama-cpp-python's server as the endpoint (its requests counted), a
misbehaving server for the failure modes, privacy enforced twice, spend that survives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomd.messages import ChatMessage, ChatRequest, Policy, ToolCall, ToolSpec, Topic
from loomd.router.cli import ask
from loomd.router.cloud import Breaker, CloudRefused, read_key
from loomd.router.policy import Resolved
from loomd.router.settings import CloudSettings
from tests.testmodels import SMOLLM, TINY, require

from .conftest import HostFactory, run
from .servers import BadCloud, LlamaServer
from .test_chat import _events, _open_turn, _until_done, llm_of, req

KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    require(TINY)
    tiny = TINY
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(tiny, tmp_path_factory.mktemp("cloud") / "server.log", api_key=KEY)
    yield server
    server.close()


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "creds"
    d.mkdir()
    (d / "llm-cloud-key").write_text(KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def cloud_toml(url: str, **kw: object) -> str:
    lines = [
        "[llm.cloud]",
        f'base_url = "{url}"',
        'model = "cloud"',
        'schema_style = "json_object"',
    ]
    lines += [f"{k} = {v}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


OPEN = '[llm.policy]\nprivacy = "public"\nallow_cloud = true\n'


def test_key_comes_from_credentials_or_env(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("from-file\n")
    s = CloudSettings(key_name="k", key_env="MY_KEY")
    assert read_key(s, {"CREDENTIALS_DIRECTORY": str(tmp_path), "MY_KEY": "e"}) == "from-file"
    assert read_key(s, {"MY_KEY": "from-env"}) == "from-env"
    assert read_key(s, {}) == ""


def test_breaker_opens_then_half_opens() -> None:
    now = [0.0]
    b = Breaker(2, 10.0, clock=lambda: now[0])
    b.fail("x")
    assert b.state == "closed"
    b.fail("x")
    assert b.state == "open"
    now[0] = 10.0
    assert b.state == "half-open"
    b.ok()
    assert b.state == "closed"


@pytest.mark.usefixtures("creds")
def test_cloud_answers_streams_and_spend_survives_restart(
    llm_host: HostFactory, cloud: LlamaServer
) -> None:
    extra = OPEN + cloud_toml(cloud.base_url, price_in_per_1k=0.1, price_out_per_1k=0.2)

    async def first() -> float:
        async with llm_host(extra=extra) as host:  # no local model: the cloud must answer
            llm = llm_of(host)
            sub, _ = await _open_turn(llm.ctx.bus, req(max_tokens=8, temperature=0.0))
            chunks, done = await _until_done(sub)
            assert done.error == "" and done.route == "cloud"
            assert chunks > 0 and done.tokens > 0
            assert llm.cloud is not None
            spent = llm.cloud.ledger.today()
            assert spent > 0
            return spent

    with cloud.asked(1):
        spent = run(first())

    async def second() -> None:
        async with llm_host(extra=extra) as host:
            llm = llm_of(host)
            assert llm.cloud is not None and llm.cloud.ledger.today() == spent
            assert llm.facts().spend_today == spent

    run(second())


@pytest.mark.usefixtures("creds")
def test_daily_cap_denies_with_the_reason(llm_host: HostFactory, cloud: LlamaServer) -> None:
    extra = OPEN + cloud_toml(cloud.base_url, price_out_per_1k=1.0, daily_cap=0.001)

    async def body() -> None:
        async with llm_host(extra=extra) as host:
            done = await ask(llm_of(host).ctx.bus, req(max_tokens=8), timeout=30)
            assert done.route == "deny" and "daily cloud cap" in done.error

    with cloud.asked(0):
        run(body())


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    policies=st.lists(
        st.builds(
            Policy,
            privacy=st.sampled_from(["private", "local-only"]),
            latency_budget_ms=st.none() | st.integers(1, 100000),
            cost_cap=st.none() | st.floats(0, 100),
            quality_threshold=st.none() | st.floats(0, 1),
            allow_cloud=st.none() | st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    local=st.booleans(),
)
@pytest.mark.usefixtures("creds")
def test_private_and_local_only_never_reach_the_cloud(
    llm_host: HostFactory, cloud: LlamaServer, policies: list[Policy], local: bool
) -> None:
    tiny = TINY
    options = {"model": tiny} if local else {}

    async def body() -> None:
        async with llm_host(extra=OPEN + cloud_toml(cloud.base_url), **options) as host:
            llm = llm_of(host)
            for policy in policies:
                done = await ask(llm.ctx.bus, req(max_tokens=4, policy=policy), timeout=30)
                assert done.route in ("local", "deny")
            # and the client itself refuses, even when asked directly, and counts it
            assert llm.cloud is not None
            resolved = Resolved("private", 1000, 1.0, 0.0, True)
            with pytest.raises(CloudRefused):
                await llm.cloud.chat(
                    [{"role": "user", "content": "x"}], resolved, max_tokens=4, temperature=0
                )
            assert llm.cloud.counts["refused"] == 1

    with cloud.asked(0):
        run(body(), timeout=120)


@pytest.mark.usefixtures("creds")
def test_hybrid_delivers_quick_then_refine_on_one_thread(
    llm_host: HostFactory, cloud: LlamaServer, tiny: Path
) -> None:
    extra = (
        '[llm.policy]\nprivacy = "public"\nallow_cloud = true\nquality_threshold = 1.0\n'
        + cloud_toml(cloud.base_url)
    )

    async def body() -> None:
        async with llm_host(extra=extra, model=tiny) as host:
            bus = llm_of(host).ctx.bus
            sub, ev = await _open_turn(bus, req(max_tokens=6))
            _, quick = await _until_done(sub)
            _, refine = await _until_done(sub)
            assert (quick.route, quick.phase) == ("local", "quick") and quick.error == ""
            assert (refine.route, refine.phase) == ("cloud", "refine") and refine.error == ""
            assert quick.decision_id == refine.decision_id == ev.id.hex()

    run(body())


@pytest.mark.parametrize(
    ("mode", "words", "hits"),
    [
        ("auth", "refused the key", 1),
        ("rate", "rate limit", 3),
        ("error", "server error", 3),
        ("garbage", "garbage", 1),
        ("silence", "silent for", 3),
    ],
)
def test_misbehaving_cloud_gives_a_clear_error(
    llm_host: HostFactory, mode: str, words: str, hits: int
) -> None:
    async def body() -> None:
        async with BadCloud() as bad:
            extra = OPEN + cloud_toml(bad.url(mode), retries=2, timeout_s=0.3)
            async with llm_host(extra=extra) as host:
                llm = llm_of(host)
                errors = await _events(llm.ctx.bus, Topic.ERROR)
                done = await ask(llm.ctx.bus, req(max_tokens=8), timeout=30)
                assert done.route == "cloud" and words in done.error
                assert bad.hits[mode] == hits
                err = await errors.get(timeout=5)
                assert err.payload["code"] == "llm_cloud"

    run(body())


def test_retry_after_one_429_succeeds(llm_host: HostFactory) -> None:
    async def body() -> None:
        async with BadCloud() as bad:
            extra = OPEN + cloud_toml(bad.url("rate-once"), retries=2)
            async with llm_host(extra=extra) as host:
                done = await ask(llm_of(host).ctx.bus, req(max_tokens=8), timeout=30)
                assert done.error == "" and done.text == "hello from the cloud"
                assert bad.hits["rate-once"] == 2

    run(body())


def test_breaker_opens_and_local_takes_over(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with BadCloud() as bad:
            extra = OPEN + cloud_toml(bad.url("error"), retries=0, breaker_failures=2)
            async with llm_host(extra=extra, model=tiny) as host:
                llm = llm_of(host)
                # below the quality bar and over budget locally: the cloud is chosen, fails,
                # and the local model answers instead; two failures open the circuit
                p = Policy(latency_budget_ms=1, quality_threshold=1.0)
                for _ in range(2):
                    done = await ask(llm.ctx.bus, req(max_tokens=8, policy=p), timeout=30)
                    assert done.route == "local" and done.error == ""
                assert llm.cloud is not None and llm.cloud.breaker.state == "open"
                done = await ask(llm.ctx.bus, req(max_tokens=8, policy=p), timeout=30)
                assert done.route == "local"
                assert bad.hits["error"] == 2
                ex = await llm.commands()["explain"].call([done.decision_id], {})
                assert ex["decision"]["rule"] == "cloud-unusable"
                assert "circuit open" in ex["decision"]["reason"]

    run(body())


def test_status_and_metrics_show_the_cloud(llm_host: HostFactory) -> None:
    from loomd.metrics import render

    async def body() -> None:
        async with BadCloud() as bad:
            async with llm_host(
                extra=OPEN + cloud_toml(bad.url("ok"), price_out_per_1k=0.5)
            ) as host:
                llm = llm_of(host)
                done = await ask(llm.ctx.bus, req(max_tokens=4), timeout=30)
                assert done.route == "cloud" and done.text == "hello from the cloud"
                line = llm.status().lines()[-1]
                assert line.startswith("cloud: circuit closed, spent 0.0020 today")
                text = render(llm.metrics())
                assert 'loomd_llm_cloud_requests_total{outcome="requests"} 1' in text
                assert 'loomd_llm_decisions_total{route="cloud"} 1' in text

    run(body())


def test_unreachable_cloud_is_a_clear_error(llm_host: HostFactory) -> None:
    from tests.conftest import free_port

    port = free_port()  # nothing listens there

    async def body() -> None:
        extra = OPEN + cloud_toml(f"http://127.0.0.1:{port}/v1", retries=1)
        async with llm_host(extra=extra) as host:
            llm = llm_of(host)
            done = await ask(llm.ctx.bus, req(max_tokens=8), timeout=30)
            assert done.route == "cloud" and "cloud unreachable" in done.error
            assert llm.cloud is not None and llm.cloud.counts["retries"] == 1

    run(body())


# -- tools ------------------------------------------------------------------------------------
SWITCH = ToolSpec(
    "switch",
    "Switch the light",
    {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]},
    "switch@1",
)
CLOCK = ToolSpec("clock", "The time", {"type": "object", "properties": {}}, "clock@1")


def tool_req(choice: str = "auto", **kw: object) -> ChatRequest:
    call = ToolCall("call_0", "clock", {})
    return ChatRequest(
        (
            ChatMessage("user", "light on"),
            ChatMessage("assistant", "", (call,)),
            ChatMessage("tool", "12:00", tool_call_id="call_0"),
        ),
        tools=(SWITCH, CLOCK),
        tool_choice=choice,
        max_tokens=48,
        **kw,  # type: ignore[arg-type]
    )


def test_cloud_tool_calls_assembled_from_openai_deltas(llm_host: HostFactory) -> None:
    """Our own peer speaking OpenAI's streamed tool-call format (servers.BadCloud "tools")."""

    async def body() -> None:
        async with BadCloud() as peer:
            async with llm_host(extra=OPEN + cloud_toml(peer.url("tools"))) as host:
                sub, _ = await _open_turn(llm_of(host).ctx.bus, tool_req("required"))
                chunks, done = await _until_done(sub)
                assert done.error == "" and done.route == "cloud" and chunks == 0
                assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [
                    ("call_a1", "switch", {"on": True}),
                    ("call_b2", "clock", {}),
                ]
                sent = peer.bodies["tools"]  # what went out: OpenAI's wire format
                assert sent["tool_choice"] == "required"
                assert [t["function"]["name"] for t in sent["tools"]] == ["switch", "clock"]
                assert sent["messages"][1]["tool_calls"][0]["function"] == {
                    "name": "clock", "arguments": "{}",
                }  # fmt: skip
                assert sent["messages"][2] == {
                    "role": "tool", "tool_call_id": "call_0", "content": "12:00",
                }  # fmt: skip
                named = await ask(llm_of(host).ctx.bus, tool_req("switch"), timeout=30)
                assert named.tool_calls and peer.bodies["tools"]["tool_choice"] == {
                    "type": "function", "function": {"name": "switch"},
                }  # fmt: skip

    run(body())


def test_cloud_call_of_a_tool_not_offered_is_an_error(llm_host: HostFactory) -> None:
    async def body() -> None:
        async with BadCloud() as peer:
            async with llm_host(extra=OPEN + cloud_toml(peer.url("badtool"))) as host:
                errors = await _events(llm_of(host).ctx.bus, Topic.ERROR)
                done = await ask(llm_of(host).ctx.bus, tool_req(), timeout=30)
                assert not done.tool_calls and "not_offered" in done.error
                assert (await errors.get(timeout=5)).payload["code"] == "llm_bad_tool_call"

    run(body())


def test_private_tool_turn_never_reaches_the_cloud(llm_host: HostFactory) -> None:
    async def body() -> None:
        async with BadCloud() as peer:
            async with llm_host(extra=OPEN + cloud_toml(peer.url("tools"))) as host:
                done = await ask(
                    llm_of(host).ctx.bus, tool_req(policy=Policy(privacy="private")), timeout=30
                )
                assert done.route == "deny" and not done.tool_calls
                assert "tools" not in peer.hits

    run(body())


@pytest.fixture(scope="module")
def smol_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    require(SMOLLM)
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] is not installed")
    smol = SMOLLM
    server = LlamaServer(smol, tmp_path_factory.mktemp("smolcloud") / "server.log")
    yield server
    server.close()


@pytest.mark.models
def test_llama_cpp_server_named_tool_call(llm_host: HostFactory, smol_cloud: LlamaServer) -> None:
    """llama-cpp-python's server (SmolLM2's own template) does a named tool_choice, streamed
    (it repeats the name in every delta); with `auto` it ignores the tools (a plain turn:
    SmolLM2's template has no tool format). Its `chatml-function-calling` handler is no
    better: auto cannot stream (ValueError), `required` asserts, and its template drops
    `tool` messages (docs/design/tools.md)."""

    async def body() -> None:
        async with llm_host(extra=OPEN + cloud_toml(smol_cloud.base_url)) as host:
            bus = llm_of(host).ctx.bus
            done = await ask(bus, tool_req("switch", temperature=0.0), timeout=120)
            assert done.error == "" and done.route == "cloud"
            assert [c.name for c in done.tool_calls] == ["switch"]
            assert isinstance(done.tool_calls[0].arguments["on"], bool)
            auto = await ask(bus, tool_req("auto", temperature=0.0), timeout=120)
            assert auto.error == "" and not auto.tool_calls  # tools ignored: a plain turn

    run(body(), timeout=300)
