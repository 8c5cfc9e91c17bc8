"""`loomctl doctor` against real things: a real daemon (LoomdProcess), a real mosquitto, the
real disk and clock, the small real models; fake trees only for the hardware edges (thermal
zones, the Raspberry Pi throttle file, /proc/asound)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from loomd.audio.doctor import sound_cards
from loomd.doctor import (
    Check,
    Context,
    Result,
    Status,
    Verdict,
    adjtimex,
    all_checks,
    check_disk,
    check_group,
    check_socket,
    check_temperature,
    check_throttling,
    clock_synced,
    decode_throttled,
    exit_code,
    load_context,
    run_checks,
)
from loomd.router.doctor import check_gpu
from tests.conftest import LoomdProcess, free_port, loomctl
from tests.testmodels import MODELS


def only(*names: str) -> list[Check]:
    """The checks named (the board's and the components' alike)."""
    return [c for c in all_checks() if c.name in names]


def doctor(d: LoomdProcess, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`loomctl --socket S doctor --config C ARGS` as a user runs it; (exit code, output)."""
    if env is None:
        r = loomctl(d, "doctor", "--config", str(d.config), *args)
    else:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "loomd.ctl",
                "--socket",
                str(d.socket),
                "doctor",
                "--config",
                str(d.config),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    return r.returncode, r.stdout + r.stderr


def lines(out: str) -> dict[str, str]:
    """check name -> its line (with its fix line appended) from the text report."""
    found: dict[str, str] = {}
    last = ""
    for line in out.splitlines():
        mark = line[:4].strip()
        if mark in ("ok", "WARN", "FAIL", "skip"):
            name = line[6:].split("  ", 1)[0].strip()
            found[name], last = line, name
        elif line.strip().startswith("fix:") and last:
            found[last] += "\n" + line
    return found


def by_name(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


# --- against a real daemon --------------------------------------------------------------


def test_running_daemon_passes(daemon: LoomdProcess) -> None:
    code, out = doctor(daemon)
    got = lines(out)
    assert code == 0, out
    assert "FAIL" not in out, out
    assert set(got) == {c.name for c in all_checks()}, out
    assert got["daemon"].startswith("ok"), out
    assert "up " in got["daemon"] and "components running" in got["daemon"]
    assert got["socket"].startswith("ok") and "0660" in got["socket"], out
    assert got["mqtt"].startswith("skip") and got["cloud key"].startswith("skip")


def test_daemon_down_fails_with_the_fix(loomd_proc: LoomdProcess) -> None:
    code, out = doctor(loomd_proc)
    got = lines(out)
    assert code == 1, out
    assert got["daemon"].startswith("FAIL"), out
    assert "not running" in got["daemon"]
    # no unit installed here: the fix starts this daemon with its own config
    assert "fix: " in got["daemon"]
    assert "systemctl start loomd" in got["daemon"] or str(loomd_proc.config) in got["daemon"]
    # the other checks still ran
    assert got["disk"][:4].strip() in ("ok", "WARN", "FAIL")


def test_wrong_socket_mode_fails_with_chmod(daemon: LoomdProcess) -> None:
    os.chmod(daemon.socket, 0o666)
    code, out = doctor(daemon)
    got = lines(out)
    assert code == 1, out
    assert got["socket"].startswith("FAIL"), out
    assert "mode 0666" in got["socket"]
    assert f"sudo chmod 0660 {daemon.socket}" in got["socket"]
    assert got["daemon"].startswith("ok")  # root still connects: only the mode is wrong


def test_json_shape(daemon: LoomdProcess) -> None:
    code, out = doctor(daemon, "--json")
    data = json.loads(out)
    assert isinstance(data, list)
    assert [d["check"] for d in data] == [c.name for c in all_checks()]
    for d in data:
        assert set(d) == {"check", "status", "finding", "fix"}
        assert d["status"] in ("ok", "warn", "fail", "skip")
        assert d["finding"]
        assert d["status"] in ("ok", "skip") or d["fix"], d
    assert code == (1 if any(d["status"] == "fail" for d in data) else 0)


def test_each_component_contributes_its_checks_through_the_registry(
    loomd_proc: LoomdProcess,
) -> None:
    """Doctor knows no subsystem: the test package's component adds a check by an entry
    point (`loomd.doctor`), its verdict reads its own section; a component whose checks do
    not import is one failing line and the rest still run. The built-in components' checks
    (audio, mqtt, llm model, cloud key, gpu) come the same way."""
    plugin = Path(__file__).parents[1] / "seam" / "plugin"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
    }
    for port, status in ((80, "warn"), (8080, "ok")):
        loomd_proc.write_config(f"[probe]\nport = {port}\n")
        code, out = doctor(loomd_proc, "--json", env=env)
        got = {d["check"]: d for d in json.loads(out)}
        assert got["probe port"]["status"] == status, out
        assert got["probe port"]["finding"].endswith(
            f"probe port {port}" + " is privileged" * (port < 1024)
        )
        assert got["needy"]["status"] == "fail" and "did not import" in got["needy"]["finding"]
        assert "loomd_testcomp_gone" in got["needy"]["finding"]
        assert {"audio", "mqtt", "llm model", "cloud key", "gpu", "disk", "clock"} <= set(got)
        assert code == 1


# --- MQTT against a real broker ---------------------------------------------------------

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


def _broker(root: Path, **kw: object) -> object:
    from tests.bridges.conftest import Mosquitto

    b = Mosquitto(root, **kw)  # type: ignore[arg-type]
    b.start()
    return b


def _mqtt_ctx(root: Path, toml: str) -> Context:
    cfg = root / "doctor.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{root}/state"\nruntime_dir = "{root}/run"\n' + toml)
    return load_context(cfg, f"ipc://{root}/run/bus.sock")


@needs_mosquitto
def test_mqtt_reachable_and_dead_port(short_tmp: Path) -> None:
    b = _broker(short_tmp / "broker")
    try:
        port = b.port  # type: ignore[attr-defined]
        ctx = _mqtt_ctx(short_tmp, f"[mqtt]\nenabled = true\nport = {port}\n")
        r = by_name(run_checks(ctx))["mqtt"]
        assert r.status == Status.OK, r
        assert f"127.0.0.1:{port}" in r.finding
    finally:
        b.stop()  # type: ignore[attr-defined]
    dead = free_port()
    ctx = _mqtt_ctx(short_tmp, f"[mqtt]\nenabled = true\nport = {dead}\n")
    results = run_checks(ctx)
    r = by_name(results)["mqtt"]
    assert r.status == Status.FAIL, r
    assert "refused" in r.finding.lower()
    assert "mosquitto" in r.fix and "[mqtt] host/port" in r.fix
    assert exit_code(results) == 1


@needs_mosquitto
def test_mqtt_auth_and_tls(short_tmp: Path) -> None:
    b = _broker(short_tmp / "broker", tls=True, users={"board": "s3cret"})
    try:
        port, ca = b.port, b.certs / "ca.pem"  # type: ignore[attr-defined]
        good, bad = short_tmp / "pw-good", short_tmp / "pw-bad"
        good.write_text("s3cret\n")
        bad.write_text("wrong\n")
        base = (
            f'[mqtt]\nenabled = true\nhost = "localhost"\nport = {port}\ntls = true\n'
            f'ca_file = "{ca}"\nusername = "board"\n'
        )
        r = by_name(run_checks(_mqtt_ctx(short_tmp, base + f'password_file = "{good}"\n')))
        assert r["mqtt"].status == Status.OK, r["mqtt"]
        assert "mqtts://localhost" in r["mqtt"].finding
        r = by_name(run_checks(_mqtt_ctx(short_tmp, base + f'password_file = "{bad}"\n')))
        assert r["mqtt"].status == Status.FAIL, r["mqtt"]
        # mosquitto answers a wrong password with MQTT 5's 0x87 "not authorized"
        assert "refused: not authorized" in r["mqtt"].finding
        assert "password_file" in r["mqtt"].fix
        # TLS without the broker's CA: the certificate check fails, and says so
        no_ca = base.replace(f'ca_file = "{ca}"\n', "") + f'password_file = "{good}"\n'
        r = by_name(run_checks(_mqtt_ctx(short_tmp, no_ca)))
        assert r["mqtt"].status == Status.FAIL, r["mqtt"]
        assert "TLS" in r["mqtt"].finding
    finally:
        b.stop()  # type: ignore[attr-defined]


# --- the cloud key is reported, never shown ---------------------------------------------

SECRET = "sk-doctor-9f8e7d6c5b4a-never-print-me"


def test_cloud_key_present_never_printed(loomd_proc: LoomdProcess, short_tmp: Path) -> None:
    loomd_proc.write_config('[llm.cloud]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOOMD_LLM_CLOUD_KEY", "CREDENTIALS_DIRECTORY")
    }
    _, out = doctor(loomd_proc, env={**env, "LOOMD_LLM_CLOUD_KEY": SECRET})
    assert lines(out)["cloud key"].startswith("ok"), out
    assert "LOOMD_LLM_CLOUD_KEY" in out
    _, js = doctor(loomd_proc, "--json", env={**env, "LOOMD_LLM_CLOUD_KEY": SECRET})
    creds = short_tmp / "creds"
    creds.mkdir()
    (creds / "llm-cloud-key").write_text(SECRET + "\n")
    _, out2 = doctor(loomd_proc, env={**env, "CREDENTIALS_DIRECTORY": str(creds)})
    assert lines(out2)["cloud key"].startswith("ok"), out2
    assert str(creds / "llm-cloud-key") in out2
    for text in (out, js, out2):
        assert SECRET not in text
        assert SECRET[:8] not in text and SECRET[-8:] not in text
        assert str(len(SECRET)) not in lines(text).get("cloud key", text)


def test_cloud_key_absent(loomd_proc: LoomdProcess) -> None:
    loomd_proc.write_config('[llm.cloud]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOOMD_LLM_CLOUD_KEY", "CREDENTIALS_DIRECTORY")
    }
    _, out = doctor(loomd_proc, env=env)
    line = lines(out)["cloud key"]
    assert line.startswith("WARN"), out
    assert "no key" in line and "LoadCredential=llm-cloud-key" in line


# --- hardware edges: fake trees ---------------------------------------------------------


def _tree(
    root: Path,
    temps: list[int] | None = None,
    throttled: str | None = None,
    cards: str | None = None,
) -> Path:
    for i, t in enumerate(temps or []):
        z = root / f"sys/class/thermal/thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "temp").write_text(f"{t}\n")
    if throttled is not None:
        f = root / "sys/devices/platform/soc/soc:firmware/get_throttled"
        f.parent.mkdir(parents=True)
        f.write_text(throttled + "\n")
    if cards is not None:
        (root / "proc/asound").mkdir(parents=True)
        (root / "proc/asound/cards").write_text(cards)
    return root


def _ctx(hw_root: Path, **kw: object) -> Context:
    ctx = load_context(None, f"ipc://{hw_root}/none.sock", hw_root=hw_root)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


@pytest.mark.parametrize(
    ("temps", "status", "shown"),
    [
        ([45000, 52500], Status.OK, "52.5"),
        ([71000], Status.WARN, "71.0"),
        ([40000, 83200], Status.FAIL, "83.2"),
    ],
)
def test_temperature(tmp_path: Path, temps: list[int], status: Status, shown: str) -> None:
    v = check_temperature(_ctx(_tree(tmp_path, temps=temps)))
    assert v.status == status, v
    assert shown in v.finding
    assert (v.fix != "") == (status != Status.OK)


def test_no_thermal_zone_skips(tmp_path: Path) -> None:
    assert check_temperature(_ctx(tmp_path)).status == Status.SKIP


def test_throttle_bits() -> None:
    assert decode_throttled(0x0) == ([], [])
    assert decode_throttled(0x50005) == (
        ["under-voltage", "throttled"],
        ["under-voltage", "throttled"],
    )
    assert decode_throttled(0x80008) == (["soft temperature limit"], ["soft temperature limit"])
    assert decode_throttled(0x20000) == ([], ["ARM frequency capped"])


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ("throttled=0x0", Status.OK, "now none"),
        ("0x50005", Status.FAIL, "under-voltage"),
        ("0x50000", Status.WARN, "since boot under-voltage"),
        ("0x80008", Status.WARN, "soft"),
    ],
)
def test_throttling(tmp_path: Path, value: str, status: Status, words: str) -> None:
    v = check_throttling(_ctx(_tree(tmp_path, throttled=value.split("=")[-1])))
    assert v.status == status, v
    assert words in v.finding
    if "under-voltage" in v.finding:
        assert "supply" in v.fix
    if "soft" in v.finding:
        assert "cooling" in v.fix


def test_no_throttle_file_skips(tmp_path: Path) -> None:
    assert check_throttling(_ctx(tmp_path)).status == Status.SKIP


def test_sound_cards_and_audio(tmp_path: Path) -> None:
    cards = (
        " 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones\n"
        "                      bcm2835 Headphones\n"
        " 1 [Device         ]: USB-Audio - USB PnP Sound Device\n"
        "                      C-Media USB PnP Sound Device at usb-0000:01:00.0-1.3\n"
    )
    root = _tree(tmp_path / "hw", cards=cards)
    assert sound_cards(root) == ["bcm2835 Headphones", "USB PnP Sound Device"]
    cfg = tmp_path / "voice.toml"
    cfg.write_text('[voice]\nenabled = true\nsource = "mic"\nsink = "speaker"\n')
    ctx = load_context(cfg, f"ipc://{tmp_path}/none.sock", hw_root=root)
    r = by_name(run_checks(ctx, only("audio")))["audio"]
    assert "USB PnP Sound Device" in r.finding
    # no sound devices on this machine: PyAudio finds no 16 kHz mic, which is a warning
    assert r.status == Status.WARN, r
    assert "arecord -l" in r.fix


# --- disk, real filesystem, thresholds as parameters -------------------------------------


def test_disk_thresholds(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path}/state"\n')
    ctx = load_context(cfg, "ipc:///nonexistent")
    ctx.disk_warn_bytes, ctx.disk_fail_bytes = 0, 0
    assert check_disk(ctx).status == Status.OK
    ctx.disk_warn_bytes = free * 2
    v = check_disk(ctx)
    assert v.status == Status.WARN and "journalctl --vacuum" in v.fix, v
    assert str(tmp_path / "state") in v.finding  # not created yet: its filesystem counts
    ctx.disk_fail_bytes = free * 2
    assert check_disk(ctx).status == Status.FAIL


# --- the runner -------------------------------------------------------------------------


def test_a_crashing_or_hanging_check_does_not_stop_the_rest(tmp_path: Path) -> None:
    release = threading.Event()

    def crash(ctx: Context) -> object:
        return {}["boom"]

    def hang(ctx: Context) -> object:
        release.wait(30)
        raise AssertionError("released")

    ctx = _ctx(_tree(tmp_path, temps=[50000]))
    checks = [
        Check("crash", crash),
        Check("hang", hang, 0.3),  # type: ignore[arg-type]
        Check("temperature", check_temperature),
        Check("disk", check_disk),
    ]
    try:
        results = run_checks(ctx, checks)
    finally:
        release.set()
    got = by_name(results)
    assert [r.check for r in results] == ["crash", "hang", "temperature", "disk"]
    assert got["crash"].status == Status.FAIL
    assert "KeyError" in got["crash"].finding and "boom" in got["crash"].finding
    assert got["hang"].status == Status.FAIL and "no answer within 0.3 s" in got["hang"].finding
    assert got["temperature"].status == Status.OK
    assert got["disk"].status in (Status.OK, Status.WARN, Status.FAIL)
    assert exit_code(results) == 1
    assert exit_code([got["temperature"], Result("x", Status.WARN, "w", "f")]) == 0


def test_invalid_config_fails_and_the_rest_run(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[bus]\nsocket_mode = 12\n")
    got = by_name(run_checks(load_context(cfg, "ipc:///nonexistent")))
    assert got["config"].status == Status.FAIL
    assert "socket_mode" in got["config"].finding and "loomd --check" in got["config"].fix
    assert got["disk"].status != Status.FAIL or "free" in got["disk"].finding


# --- models: the small real models, and a corrupted copy --------------------------------


def _model_tree(dst: Path) -> None:
    src = Path(MODELS)
    for rel in (
        "llm/SmolLM2-135M-Instruct.gguf",
        "whisper/ggml-tiny.en.bin",
        "piper/en_US-joe-medium.onnx",
        "piper/en_US-joe-medium.onnx.json",
        "openwakeword/melspectrogram.onnx",
        "openwakeword/embedding_model.onnx",
        "openwakeword/hey_jarvis_v0.1.onnx",
        "openwakeword/alexa_v0.1.onnx",
    ):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)


MODELS_TOML = """
[llm]
enabled = true
model = "llm/SmolLM2-135M-Instruct.gguf"
[voice]
enabled = true
"""


@pytest.mark.models
def test_models_present_then_corrupted(short_tmp: Path) -> None:
    cfg = short_tmp / "m.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{short_tmp}/state"\n' + MODELS_TOML)
    ctx = load_context(cfg, "ipc:///nonexistent")
    assert ctx.models_dir == short_tmp / "state" / "models"
    # the defaults ("auto") with no models: a warning that names what keeps them off
    auto = short_tmp / "auto.toml"
    auto.write_text(f'[paths]\nstate_dir = "{short_tmp}/state"\n')
    actx = load_context(auto, "ipc:///nonexistent")
    r = by_name(run_checks(actx, only("models")))["models"]
    assert r.status == Status.WARN, r
    assert "llm stays off" in r.finding and "voice stays off" in r.finding
    assert "ggml-tiny.en.bin" in r.finding and "loomctl models fetch" in r.fix
    # nothing there yet: enabled components without their models fail
    r = by_name(run_checks(ctx, only("models")))["models"]
    assert r.status == Status.FAIL and "missing" in r.finding and "loomctl models" in r.fix
    _model_tree(ctx.models_dir)
    got = by_name(run_checks(ctx, only("models", "memory")))
    assert got["models"].status == Status.OK, got["models"]
    assert "present" in got["models"].finding
    # "auto" now finds them: on, and their files count
    r = by_name(run_checks(actx, only("models")))["models"]
    assert r.status == Status.OK and "7 configured file(s) present" in r.finding, r
    mem = got["memory"]
    assert "llm" in mem.finding and "stt" in mem.finding and "wake" in mem.finding, mem
    assert mem.status == Status.OK, mem  # ~400 MB of models, far below this machine's RAM
    # a corrupted copy: the GGUF's header overwritten, the whisper model gone
    gguf = ctx.models_dir / "llm/SmolLM2-135M-Instruct.gguf"
    with gguf.open("r+b") as f:
        f.write(b"JUNK")
    (ctx.models_dir / "whisper/ggml-tiny.en.bin").unlink()
    r = by_name(run_checks(ctx, only("models")))["models"]
    assert r.status == Status.FAIL, r
    assert "SmolLM2" in r.finding and "ggml-tiny.en.bin" in r.finding, r
    assert "loomctl models fetch" in r.fix


# --- group and socket permissions, seen by a user who is not root ------------------------


def _as_nobody(fn: Callable[[], Verdict], groups: list[int]) -> Verdict:
    """Run `fn` in a forked child that dropped to `nobody` (with `groups`)."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run the check, report, exit
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            v = fn()
            os.write(w, json.dumps([str(v.status), v.finding, v.fix]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, finding, fix = json.loads(data)
    return Verdict(Status(status), finding, fix)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody: needs root")
def test_group_membership_as_another_user(short_tmp: Path) -> None:
    users = grp.getgrnam("users").gr_gid
    os.chmod(short_tmp, 0o755)
    run = short_tmp / "run"
    run.mkdir(mode=0o750)
    os.chown(run, 0, users)
    path = run / "bus.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    try:
        os.chown(path, 0, users)
        os.chmod(path, 0o660)
        ctx = load_context(None, f"ipc://{path}")
        ctx.group = "users"
        v = _as_nobody(lambda: check_group(ctx), [])
        assert v.status == Status.FAIL, v
        assert "nobody is not in group users" in v.finding
        assert v.fix == "sudo adduser $USER users, then log out and in again"
        v = _as_nobody(lambda: check_group(ctx), [users])
        assert v.status == Status.OK and "in group users" in v.finding, v
        assert check_group(ctx).finding == "root"
        # the group's member may look, and the socket is right: ok
        assert _as_nobody(lambda: check_socket(ctx), [users]).status == Status.OK
        # a run directory the group cannot search: named, with the chmod that fixes it
        os.chmod(run, 0o700)
        v = check_socket(ctx)
        assert v.status == Status.FAIL, v
        assert f"{run} is not searchable by group users" in v.finding
        assert f"sudo chmod g+x {run}" in v.fix
    finally:
        sock.close()


def test_failed_and_troubled_components_are_named(
    loomd_proc: LoomdProcess, short_tmp: Path
) -> None:
    bad = short_tmp / "not-a-model.gguf"
    bad.write_bytes(b"this is not GGUF")
    loomd_proc.write_config(f'[llm]\nenabled = true\nmodel = "{bad}"\n')
    loomd_proc.start()
    code, out = doctor(loomd_proc)
    got = lines(out)
    assert code == 1, out  # the models check fails: the configured GGUF is not one
    assert got["models"].startswith("FAIL") and "not-a-model.gguf" in got["models"], out
    # the llm runs (the cloud could still answer) but says why its model is unusable
    assert got["daemon"].startswith("WARN"), out
    assert "llm: " in got["daemon"] and "not a valid GGUF" in got["daemon"]
    loomd_proc.stop()
    # a component that cannot start at all is a failure of the daemon check
    loomd_proc.write_config(
        f'[mqtt]\nenabled = true\nport = {free_port()}\npassword_file = "{short_tmp}/nope"\n'
        'username = "u"\n'
    )
    loomd_proc.start()
    code, out = doctor(loomd_proc)
    got = lines(out)
    assert code == 1, out
    assert got["daemon"].startswith("FAIL"), out
    assert "failed: mqtt (failed: start failed" in got["daemon"], out
    assert "loomctl status" in got["daemon"]
    assert got["mqtt"].startswith("FAIL") and f"{short_tmp}/nope" in got["mqtt"], out
    assert "password_file" in got["mqtt"]


def test_gpu_board_with_a_cpu_only_build(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvhost-ctrl").write_text("")
    (tmp_path / "dev/nvhost-gpu").write_text("")
    v = check_gpu(_ctx(tmp_path))
    # the portable wheel installed here has no CUDA: on a Jetson that is the finding
    assert v.status == Status.WARN, v
    assert "Jetson (nvhost-ctrl, nvhost-gpu)" in v.finding and "no GPU offload" in v.finding
    assert "CUDA flavour of loomd-llm" in v.fix
    assert check_gpu(_ctx(tmp_path / "nothing")).status == Status.SKIP


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody: needs root")
def test_unreadable_config_and_models_as_another_user(short_tmp: Path) -> None:
    """Like /etc/loomd and /var/lib/loomd (0750 root:loomd) seen by a user outside the group."""
    users = grp.getgrnam("users").gr_gid
    os.chmod(short_tmp, 0o755)
    etc, state = short_tmp / "etc", short_tmp / "state"
    for d in (etc, state, state / "models"):
        d.mkdir(mode=0o750)
        os.chown(d, 0, users)
    toml = f'[paths]\nstate_dir = "{state}"\n[llm]\nenabled = true\nmodel = "llm/m.gguf"\n'
    hidden, public = etc / "loomd.toml", short_tmp / "loomd.toml"
    for cfg in (hidden, public):
        cfg.write_text(toml)
        cfg.chmod(0o644)

    def run(cfg: Path, name: str) -> Callable[[], Verdict]:
        def one() -> Verdict:
            ctx = load_context(cfg, "ipc:///nonexistent")
            ctx.group = "users"
            r = by_name(run_checks(ctx, only(name)))[name]
            return Verdict(r.status, r.finding, r.fix)

        return one

    v = _as_nobody(run(hidden, "config"), [])
    assert v.status == Status.FAIL, v
    assert f"may not read {hidden}" in v.finding
    assert "sudo adduser $USER users" in v.fix
    assert _as_nobody(run(hidden, "config"), [users]).status == Status.OK
    v = _as_nobody(run(public, "models"), [])
    assert v.status == Status.FAIL, v
    assert f"may not look at {state}/models/llm/m.gguf" in v.finding
    v = _as_nobody(run(public, "disk"), [])  # the filesystem of what it may not enter
    assert "free for " in v.finding and str(state) in v.finding, v


def test_stopped_daemon_is_named_not_waited_for(daemon: LoomdProcess) -> None:
    daemon.signal(signal.SIGSTOP)
    try:
        r = loomctl(daemon, "--timeout", "1", "doctor", "--config", str(daemon.config))
    finally:
        daemon.signal(signal.SIGCONT)
    got = lines(r.stdout)
    assert r.returncode == 1, r.stdout
    assert got["daemon"].startswith("FAIL"), r.stdout
    assert "no answer within 1 s" in got["daemon"]
    assert got["memory"][:4].strip() in ("ok", "WARN"), r.stdout  # did not wait it out
    assert got["socket"].startswith("ok"), r.stdout


def test_clock_from_the_real_kernel() -> None:
    kernel = adjtimex()
    assert kernel is not None  # read-only adjtimex needs no privilege
    state, status, maxerror = kernel
    assert 0 <= state <= 5 and maxerror >= 0
    assert clock_synced(state, status, maxerror) == (
        state != 5 and not status & 0x40 and maxerror < 16_000_000
    )
    assert clock_synced(0, 0x2001, 120_000)  # PLL | NANO, 120 ms: synchronised
    assert not clock_synced(5, 0x40, 16_000_000)  # TIME_ERROR, STA_UNSYNC
    assert not clock_synced(0, 0, 16_000_000)  # max error at NTP's "unsynchronised"
    v = by_name(run_checks(_ctx(Path("/")), only("clock")))["clock"]
    assert v.status in (Status.OK, Status.WARN, Status.SKIP), v
    assert (v.status == Status.OK) == clock_synced(state, status, maxerror) or "timedatectl" in (
        v.finding
    )
