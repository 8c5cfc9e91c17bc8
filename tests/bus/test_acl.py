"""The ACL as data: rules from config and acl.d/, grants per identity, subscription
coverage, capability checks (sensitive, allowed_callers). The real-socket paths per identity
kind are in tests/bus/test_acl_identities.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loomd.bus.acl import Acl, AclRule, Manifest, covers, read_acl_dir
from loomd.bus.identity import Identity, IdentityKind
from loomd.errors import ConfigError
from loomd.settings import load_config

NOBODY = Identity.unix(65534, 65534)
GUEST = Identity(IdentityKind.UNIX, "guest", 4242, 4343, ("guests", "loomd"))


@pytest.mark.parametrize(
    ("allowed", "requested", "ok"),
    [
        ("#", "#", True),
        ("#", "a.*.c", True),
        ("sensor.#", "sensor.#", True),
        ("sensor.#", "sensor.*.temp", True),
        ("sensor.#", "#", False),
        ("sensor.*", "sensor.#", False),
        ("sensor.*", "sensor.*", True),
        ("sensor.*", "sensor.kitchen", True),
        ("sensor.*", "sensor.kitchen.temp", False),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.*.z", True),
        ("a.#.z", "a.#", False),
        ("a.b", "a.*", False),
    ],
)
def test_covers(allowed: str, requested: str, ok: bool) -> None:
    assert covers(allowed, requested) is ok


def test_unix_identity_names_from_uid_and_gid() -> None:
    ident = Identity.unix(0, 0)
    assert ident.superuser and "user:root" in ident.names and "group:root" in ident.names
    assert "uid:65534" in NOBODY.names and not NOBODY.superuser
    assert NOBODY.label.endswith("(65534)")


def test_no_rules_is_as_before_but_sensitive_closed() -> None:
    c = Acl().caller(NOBODY)
    assert c.grants.may_publish("action.door") and c.grants.may_subscribe("#")
    assert c.may_call("home.lights") and not c.may_call("home.lock", sensitive=True)
    assert Acl().caller(Identity.unix(0, 0)).may_call("home.lock", sensitive=True)
    assert Acl().caller(Identity.daemon("assist")).may_call("home.lock", sensitive=True)


def test_rules_add_up_and_deny_the_rest() -> None:
    acl = Acl(
        [
            AclRule(identity=("group:guests",), publish=("sensor.#",), call=("home.*",)),
            AclRule(identity=("uid:4242",), subscribe=("sensor.*",), state=("guest*",)),
            AclRule(identity=("group:admins",), call=("*",), sensitive=True),
        ]
    )
    g = acl.caller(GUEST)
    assert g.grants.may_publish("sensor.kitchen.temp") and not g.grants.may_publish("action.x")
    assert g.grants.may_subscribe("sensor.kitchen") and not g.grants.may_subscribe("sensor.#")
    assert g.may_call("home.lights") and not g.may_call("home.lock", sensitive=True)
    assert not g.may_call("llm.chat")
    assert g.grants.may_state("guest.notes") and not g.grants.may_state("user")
    assert not g.grants.may_control("agents.stop")
    # nobody is named by no rule: only the implicit minimum
    n = acl.caller(NOBODY)
    assert not n.grants.may_publish("sensor.kitchen") and not n.grants.may_subscribe("#")
    assert n.grants.may_publish("caps.invoke") and n.grants.may_publish("thread.ab12.reply")
    assert n.grants.may_subscribe("thread.ab12.reply") and not n.grants.may_subscribe(
        "thread.*.reply"
    )


def test_allowed_callers_come_first() -> None:
    acl = Acl([AclRule(identity=("*",), call=("*",), sensitive=True)])
    g = acl.caller(GUEST)
    assert g.may_call("garage.open", allowed_callers=("group:guests",))
    assert not g.may_call("garage.open", allowed_callers=("group:family", "plugin:scenes"))
    assert acl.caller(Identity.unix(0, 0)).may_call("garage.open", allowed_callers=("uid:1",))


def test_plugin_gets_its_manifest_once_rules_exist() -> None:
    m = Manifest(subscribe=("greet.#",), publish=("greet.out",), call=("lights.*",))
    ident = Identity.plugin("greeter")
    assert Acl().caller(ident, m).grants.may_publish("anything")  # no rules: as before
    acl = Acl([AclRule(identity=("plugin:greeter",), publish=("extra.#",))])
    g = acl.caller(ident, m).grants
    assert g.may_publish("greet.out") and g.may_publish("extra.x") and not g.may_publish("x")
    assert g.may_subscribe("greet.hello") and not g.may_subscribe("other")
    assert g.may_call("lights.set") and not g.may_call("locks.open")


def test_acl_tables_in_config_and_acl_d(tmp_path: Path) -> None:
    cfg = tmp_path / "loomd.toml"
    cfg.write_text('[[acl]]\nidentity = ["group:loomd"]\npublish = ["#"]\ncall = ["*"]\n')
    s = load_config(cfg)
    assert s.bus.acl == (AclRule(identity=("group:loomd",), publish=("#",), call=("*",)),)
    d = tmp_path / "acl.d"
    d.mkdir()
    (d / "10-ha.toml").write_text('[[acl]]\nidentity = ["curve:ha"]\nsubscribe = ["home.#"]\n')
    assert read_acl_dir(d)[0].identity == ("curve:ha",)
    (d / "20-bad.toml").write_text(
        '[[acl]]\nidentity = ["curve:ha"]\nsubscribe = ["a.#.#.#.#.#"]\n'
    )
    with pytest.raises(ConfigError, match=r"20-bad.toml.*acl\[0\].subscribe"):
        read_acl_dir(d)
    cfg.write_text('[[acl]]\nidentity = ["alice"]\n')
    with pytest.raises(ConfigError, match="kind:name"):
        load_config(cfg)


def test_daemon_user_is_superuser() -> None:
    assert Identity.unix(os.geteuid(), os.getegid()).superuser
