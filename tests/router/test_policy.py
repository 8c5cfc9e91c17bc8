"""decide() is pure: rules tested directly and as properties over random facts and policies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loomd.messages import ChatMessage, ChatRequest, Policy, ToolSpec
from loomd.router.policy import ON_BOARD, Facts, Resolved, Route, decide, resolve
from loomd.router.settings import PolicySettings

REQ = ChatRequest((ChatMessage("user", "turn on the lights"),), max_tokens=64)

facts_st = st.builds(
    Facts,
    local_available=st.booleans(),
    local_loaded=st.booleans(),
    local_tps=st.floats(0, 500),
    local_ttft_ms=st.floats(0, 5000),
    local_confidence=st.floats(0, 1),
    queue_depth=st.integers(0, 20),
    cloud_configured=st.booleans(),
    cloud_state=st.sampled_from(["none", "closed", "open", "half-open"]),
    price_in_per_1k=st.floats(0, 1),
    price_out_per_1k=st.floats(0, 1),
    spend_today=st.floats(0, 10),
    daily_cap=st.floats(0, 10),
    cpu_temp_c=st.none() | st.floats(20, 100),
    cpu_pressure=st.floats(0, 100),
)
policy_st = st.builds(
    Resolved,
    privacy=st.sampled_from(["public", "sensitive", "private", "local-only"]),
    latency_budget_ms=st.integers(1, 100000),
    cost_cap=st.floats(0, 1),
    quality_threshold=st.floats(0, 1),
    allow_cloud=st.booleans(),
)


@given(facts_st, policy_st)
def test_private_and_local_only_never_leave_the_board(facts: Facts, policy: Resolved) -> None:
    d = decide(REQ, policy, facts)
    if policy.privacy in ON_BOARD or not policy.allow_cloud:
        assert d.route in (Route.LOCAL, Route.DENY)
    if d.route in (Route.CLOUD, Route.HYBRID):
        assert policy.cloud_allowed and facts.cloud_configured and facts.cloud_state != "open"
    if d.route == Route.LOCAL:
        assert facts.local_available
    assert d.reason and d.rule


@given(facts_st, policy_st)
def test_cloud_respects_the_caps(facts: Facts, policy: Resolved) -> None:
    d = decide(REQ, policy, facts)
    if d.route in (Route.CLOUD, Route.HYBRID):
        assert d.est_cost <= policy.cost_cap
        assert not facts.daily_cap or facts.spend_today + d.est_cost <= facts.daily_cap


def cloud_ok(**kw: object) -> Facts:
    base: dict[str, object] = {
        "local_available": True,
        "local_loaded": True,
        "local_tps": 50.0,
        "local_ttft_ms": 100.0,
        "local_confidence": 0.6,
        "cloud_configured": True,
        "cloud_state": "closed",
    }
    return Facts(**{**base, **kw})  # type: ignore[arg-type]


def pol(**kw: object) -> Resolved:
    return resolve(Policy(**kw), PolicySettings())  # type: ignore[arg-type]


def test_defaults_fill_unset_fields() -> None:
    p = pol(privacy="public")
    assert p.privacy == "public" and p.allow_cloud is False and p.latency_budget_ms == 10000


def test_low_confidence_goes_hybrid_when_local_is_fast_enough() -> None:
    d = decide(REQ, pol(privacy="public", allow_cloud=True, quality_threshold=0.8), cloud_ok())
    assert d.route == Route.HYBRID and d.rule == "quality-hybrid"
    assert d.confidence == 0.6  # the local model's own measured confidence


TOOL_REQ = ChatRequest(
    (ChatMessage("user", "water the plants"),),
    max_tokens=64,
    tools=(ToolSpec("garden_water", "Water a zone", {"type": "object"}, "garden.water@1"),),
)


@given(facts_st, policy_st)
def test_a_tool_turn_is_never_hybrid_and_private_stays(facts: Facts, policy: Resolved) -> None:
    d = decide(TOOL_REQ, policy, facts)
    assert d.route != Route.HYBRID  # a call is acted on once: one answer
    if policy.privacy in ON_BOARD or not policy.allow_cloud:
        assert d.route in (Route.LOCAL, Route.DENY)


def test_low_confidence_tool_turn_goes_to_the_cloud() -> None:
    d = decide(TOOL_REQ, pol(privacy="public", allow_cloud=True, quality_threshold=0.8), cloud_ok())
    assert d.route == Route.CLOUD and d.rule == "quality-tools"
    d = decide(TOOL_REQ, pol(privacy="private", quality_threshold=0.8), cloud_ok())
    assert d.route == Route.LOCAL and d.rule == "privacy"


def test_public_goes_to_cloud_when_local_misses_the_budget() -> None:
    facts = cloud_ok(local_tps=2.0)
    d = decide(REQ, pol(privacy="public", allow_cloud=True, latency_budget_ms=3000), facts)
    assert d.route == Route.CLOUD and d.rule == "latency"
    sensitive = decide(
        REQ, pol(privacy="sensitive", allow_cloud=True, latency_budget_ms=3000), facts
    )
    assert sensitive.route == Route.LOCAL


def test_heat_and_pressure_slow_the_local_estimate() -> None:
    p = pol(privacy="public", allow_cloud=True)
    cool = decide(REQ, p, cloud_ok()).est_latency_ms
    hot = decide(REQ, p, cloud_ok(cpu_temp_c=85.0)).est_latency_ms
    busy = decide(REQ, p, cloud_ok(cpu_pressure=50.0)).est_latency_ms
    assert hot > cool and busy > cool


def test_open_circuit_and_cost_cap_fall_back_to_local() -> None:
    p = pol(privacy="public", allow_cloud=True, quality_threshold=0.9)
    assert decide(REQ, p, cloud_ok(cloud_state="open")).rule == "cloud-unusable"
    d = decide(REQ, p, cloud_ok(price_out_per_1k=1000.0))
    assert d.route == Route.LOCAL and "cost" in d.reason
    d = decide(REQ, p, cloud_ok(local_available=False, price_out_per_1k=1000.0))
    assert d.route == Route.DENY and "cost" in d.reason


def test_decide_is_deterministic() -> None:
    p, f = pol(privacy="public", allow_cloud=True), cloud_ok()
    assert decide(REQ, p, f) == decide(REQ, p, f)


def test_agent_default_privacy_sits_between_request_and_config() -> None:
    defaults = PolicySettings(agents={"diary": "local-only"})
    assert resolve(Policy(), defaults, "diary").privacy == "local-only"
    assert resolve(Policy(), defaults, "other").privacy == "sensitive"
    assert resolve(Policy(privacy="public"), defaults, "diary").privacy == "public"


def test_agent_privacy_is_checked() -> None:
    import pytest

    from loomd.errors import ConfigError

    with pytest.raises(ConfigError, match="diary"):
        PolicySettings(agents={"diary": "secret"})
