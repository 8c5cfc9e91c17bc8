"""Who a spoken turn acts for: `voice:local` (the board's mic, here a WAV fed as one), never
the trusted `daemon:voice`. By default a voice turn may call what is not sensitive; "unlock
the front door" (a lock: `home.unlock` is sensitive) is refused with a spoken reason until
an `[[acl]]` rule grants `voice:local` the sensitive call; a typed turn of root still works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from loomd.assist.tools import refusal, who_asks
from loomd.audio.agent import VOICE_MANIFEST, voice_identity
from loomd.bus.acl import CALLER, Acl, AclRule
from tests.assist.conftest import EXAMPLE, home_config
from tests.audio.conftest import join_wavs, say_wav, speech_dir, voice_toml  # noqa: F401
from tests.bridges.conftest import Mosquitto
from tests.conftest import LoomdProcess, loomctl, wait_until

UNLOCK = {"name": "home.unlock", "sensitive": True, "confirm": True}
LIGHTS = {"name": "home.turn_on"}


def _as(acl: Acl, source: str, site: str = "local") -> Any:
    return CALLER.set(acl.caller(voice_identity(source, site), VOICE_MANIFEST))


def test_voice_identity_by_source_and_its_default_grants() -> None:
    assert voice_identity("mic", "kitchen").label == "voice:local"
    assert voice_identity("wav", "local").label == "voice:local"
    assert voice_identity("bus", "porch").label == "voice:porch"  # a satellite's audio
    assert not voice_identity("mic", "local").superuser
    rule = AclRule(identity=("voice:local",), call=("home.unlock",), sensitive=True)
    other = AclRule(identity=("group:loomd",), call=("home.*",))
    for acl, unlock_ok in ((Acl(), False), (Acl([other]), False), (Acl([rule]), True)):
        token = _as(acl, "mic")
        try:
            assert refusal(LIGHTS) == ""  # not sensitive: voice may, rules or none
            why = refusal(UNLOCK)
            assert (why == "") is unlock_ok, why
            if not unlock_ok:
                assert "voice:local" in why and "sensitive = true" in why
            assert who_asks() == "by voice"
        finally:
            CALLER.reset(token)
    token = _as(Acl([rule]), "bus", "porch")  # the rule names the board's mic only
    try:
        assert "voice:porch" in refusal(UNLOCK)
    finally:
        CALLER.reset(token)


def _turn(d: LoomdProcess, clip: Path) -> dict[str, Any]:
    p = loomctl(d, "voice", "test", str(clip), "--json", timeout=300)
    # (exit 1 when a turn is not "ok": the follow-up listen after a question hears silence)
    assert p.stdout.startswith("{"), p.stdout + p.stderr + d.log.read_text()[-3000:]
    turns = json.loads(p.stdout)["turns"]
    assert turns and turns[0]["outcome"] == "ok", p.stdout
    return dict(turns[0])


def _typed(d: LoomdProcess, text: str) -> dict[str, Any]:
    p = loomctl(d, "assist", text, "--json", "--conversation", "typed", timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return dict(json.loads(p.stdout))


@pytest.mark.models
async def test_spoken_unlock_needs_a_rule_typed_root_does_not(
    short_tmp: Path,
    broker: Mosquitto,
    models: Path,
    speech_dir: Path,  # noqa: F811
) -> None:
    wake = say_wav("hey jarvis", speech_dir / "wake.wav", pad=(0.5, 0.6))
    unlock = join_wavs(
        [wake, say_wav("unlock the front door", speech_dir / "unlock.wav", pad=(0.0, 0.8))],
        speech_dir / "wake-unlock.wav",
    )
    yes = join_wavs(
        [wake, say_wav("yes", speech_dir / "yes.wav", pad=(0.0, 0.8))], speech_dir / "yes2.wav"
    )
    root = short_tmp / "d"
    (root / "home.d").mkdir(parents=True)
    (root / "acl.d").mkdir()
    shutil.copy(EXAMPLE, root / "home.d" / "home.toml")
    acl = f'[bus]\nacl_dir = "{root}/acl.d"\n'
    d = LoomdProcess(
        root, home_config(broker) + acl + voice_toml(models, agent='"assist"', sink='"buffer"')
    )
    try:
        d.start(timeout=90)
        st = json.loads(loomctl(d, "status", "--json").stdout)
        assert st["components"]["voice"]["status"]["identity"] == "voice:local"
        with broker.sub("home/hall/front_door/set") as sub:
            await sub.ready()
            # 1. the default: spoken, refused before anything is asked or sent, and said why
            turn = _turn(d, unlock)
            assert "unlock the front door" in turn["transcript"].lower(), turn
            assert [a["code"] for a in turn["actions"]] == ["forbidden"], turn
            assert "voice:local" in turn["actions"][0]["result"], turn
            assert "sensitive = true" in turn["actions"][0]["result"], turn
            assert turn["reply"] == "Sorry, I'm not allowed to unlock the front door by voice"
            # 2. typed by root (a superuser): asked back, then done
            t = _typed(d, "unlock the front door")
            assert t["reply"] == "Unlock the front door?", t
            t = _typed(d, "yes")
            assert [a["code"] for a in t["actions"]] == ["ok"], t
            assert await sub.wait(1) == ["home/hall/front_door/set UNLOCK"]
            # 3. a rule for the board's mic (acl.d/ is read when it changes, no restart)
            (root / "acl.d" / "voice.toml").write_text(
                '[[acl]]\nidentity = ["voice:local"]\ncall = ["home.*"]\nsensitive = true\n'
            )
            wait_until(
                lambda: "1 in" in loomctl(d, "status", "--json").stdout, 15, "the acl.d rule"
            )
            turn = _turn(d, unlock)
            assert [a["code"] for a in turn["actions"]] == ["confirm"], turn  # still asked
            assert turn["reply"] == "Unlock the front door?", turn
            turn = _turn(d, yes)
            assert [a["code"] for a in turn["actions"]] == ["ok"], turn
            got = await sub.wait(2)
        # nothing reached the lock but the two unlocks that were allowed
        assert got == ["home/hall/front_door/set UNLOCK"] * 2
    finally:
        d.close()
