"""The model only sees the tools its turn's identity may call (`loomd.assist.tools`): the
check is a question to the caller's grants, carried with the turn."""

from __future__ import annotations

from loomd.assist.tools import may_call
from loomd.audio.agent import VOICE_MANIFEST, voice_identity
from loomd.bus.acl import CALLER, Acl, AclRule
from loomd.bus.identity import Identity, IdentityKind

CAPS = [
    {"name": "lights.set"},
    {"name": "door.unlock", "sensitive": True},
    {"name": "garage.open", "allowed_callers": ["group:family"]},
    {"name": "llm.chat"},
]
GUEST = Identity(IdentityKind.UNIX, "guest", 4242, 4242, ("guest",))
KID = Identity(IdentityKind.UNIX, "kid", 4343, 4343, ("family",))


def _shown(acl: Acl, who: Identity | None) -> list[str]:
    token = CALLER.set(acl.caller(who) if who is not None else None)
    try:
        return [c["name"] for c in CAPS if may_call(c)]
    finally:
        CALLER.reset(token)


def test_tools_follow_the_turns_identity() -> None:
    acl = Acl(
        [
            AclRule(identity=("group:guest", "group:family"), call=("lights.*", "garage.*")),
            AclRule(identity=("user:kid",), call=("door.*",), sensitive=True),
        ]
    )
    assert _shown(acl, GUEST) == ["lights.set"]  # garage: not in allowed_callers
    assert _shown(acl, KID) == ["lights.set", "door.unlock", "garage.open"]
    assert _shown(acl, Identity.daemon("voice")) == [c["name"] for c in CAPS]
    # a spoken turn (its manifest: what is not sensitive), not the daemon
    token = CALLER.set(acl.caller(voice_identity("mic", "local"), VOICE_MANIFEST))
    try:
        assert [c["name"] for c in CAPS if may_call(c)] == ["lights.set", "llm.chat"]
    finally:
        CALLER.reset(token)
    assert _shown(acl, None) == [c["name"] for c in CAPS]  # the daemon itself
    assert _shown(Acl(), GUEST) == ["lights.set", "llm.chat"]  # no rules: sensitive closed
