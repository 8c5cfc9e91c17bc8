from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from loomd.bus.settings import BusSettings
from loomd.config import resolve_dir
from loomd.errors import ConfigError
from loomd.settings import (
    Settings,
    changed_keys,
    default_config_path,
    load_config,
    resolve_paths,
)
from loomd.state.settings import StateSettings

PACKAGED = Path(__file__).resolve().parent.parent / "config" / "loomd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loomd.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert "\n" not in str(err), "a config error is one line"
    assert str(err).startswith(f"{path}: ")
    return err


# --- defaults and the packaged file ---------------------------------------------


def test_defaults_without_a_file() -> None:
    settings = load_config(None)
    assert settings == Settings()
    assert settings.source is None
    assert settings.bus.max_frame_bytes == 1048576
    assert settings.bus.durable == ("control.#", "action.#")
    assert dict(settings.bus.default_qos) == {}
    assert settings.daemon.drain_timeout_s == 5.0
    assert settings.state.max_map_size_mb == 1024
    assert settings.metrics.port == 9478


def test_to_dict_is_plain_data() -> None:
    data = load_config(None).to_dict()
    assert {"daemon", "paths", "bus", "state", "metrics"} <= set(data)
    assert data["bus"]["durable"] == ["control.#", "action.#"]
    assert data["bus"]["default_qos"] == {}
    assert data["bus"]["socket_mode"] == "0660"


def _uncommented(text: str) -> str:
    # `#key = value` is a setting, `# text` an explanation (see the file's header).
    return re.sub(r"^#(?=[a-z_])", "", text, flags=re.MULTILINE)


def test_packaged_config_equals_defaults() -> None:
    settings = load_config(PACKAGED)
    assert settings == load_config(None)
    assert settings.source == PACKAGED


def test_packaged_config_lists_every_key_with_its_default() -> None:
    listed = tomllib.loads(_uncommented(PACKAGED.read_text()))
    assert listed == Settings().to_dict()


def test_packaged_config_explains_every_key() -> None:
    lines = PACKAGED.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"#[a-z_]+ = ", line):
            assert lines[i - 1].startswith("# "), f"no explanation above {line!r}"
    header = "\n".join(lines[:12])
    assert "/etc/loomd/loomd.toml" in header
    assert "systemctl reload loomd" in header


# --- loading ---------------------------------------------------------------------


def test_a_file_overrides_key_by_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [bus]
        tcp_port = 9000
        durable = ["control.#"]
        default_qos = { "audio.#" = "realtime", "sensor.*.temp" = "batched" }
        [daemon]
        drain_timeout_s = 2   # an integer where a float is expected is fine
        """,
    )
    settings = load_config(path)
    assert settings.source == path
    assert settings.bus.tcp_port == 9000
    assert settings.bus.durable == ("control.#",)
    assert settings.bus.default_qos == {"audio.#": "realtime", "sensor.*.temp": "batched"}
    assert settings.daemon.drain_timeout_s == 2.0
    assert isinstance(settings.daemon.drain_timeout_s, float)
    assert settings.bus.max_frame_bytes == 1048576  # untouched keys keep their default
    assert sorted(changed_keys(Settings(), settings)) == [
        "bus.default_qos",
        "bus.durable",
        "bus.tcp_port",
        "daemon.drain_timeout_s",
    ]


def test_settings_are_frozen_and_immutable() -> None:
    settings = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.bus.tcp_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.bus.default_qos["x.#"] = "realtime"  # type: ignore[index]


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ConfigError) as info:
        BusSettings(tcp_port=0)
    assert str(info.value) == "bus.tcp_port = 0: expected an integer from 1 to 65535"


def test_overrides_from_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nlog_level = 'warning'\n")
    settings = load_config(path, overrides={"daemon.log_level": "debug"})
    assert settings.daemon.log_level == "debug"
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"daemon.log_levl": "debug"})
    assert str(info.value).startswith("command line: daemon.log_levl = 'debug'")
    assert "did you mean daemon.log_level?" in str(info.value)


def test_qos_for_uses_the_first_matching_pattern() -> None:
    bus = BusSettings(default_qos={"audio.#": "realtime", "#": "reliable"})
    assert bus.qos_for("audio.frames") == "realtime"
    assert bus.qos_for("control.stop") == "reliable"
    assert BusSettings().qos_for("audio.frames") is None
    assert BusSettings(socket_mode="0640").socket_mode_int == 0o640


# --- errors ----------------------------------------------------------------------


def test_out_of_range_message_is_exact(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[bus]\nmax_frame_bytes = -5\n")
    path = tmp_path / "loomd.toml"
    assert (
        str(err) == f"{path}: bus.max_frame_bytes = -5: expected an integer from 1024 to 268435456"
    )
    assert (err.key, err.value, err.source) == ("bus.max_frame_bytes", -5, str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown keys and sections, with a suggestion
        (
            "[bus]\nmax_frame_byte = 5\n",
            "bus.max_frame_byte = 5: expected a known key "
            "(unknown key; did you mean bus.max_frame_bytes?)",
        ),
        ("[bus]\nmap_size_mb = 5\n", "did you mean state.map_size_mb?"),
        ("[bus]\nzzzz = 5\n", "unknown key; keys of [bus]: socket, socket_mode,"),
        (
            "[buss]\ntcp_port = 1\n",
            "buss = {...}: expected a known section (unknown; did you mean bus?)",
        ),
        ("log_level = 'info'\n", "did you mean daemon.log_level?"),
        ("bus = 5\n", "bus = 5: expected a table ([bus])"),
        # wrong types
        ("[bus]\ntcp_port = true\n", "bus.tcp_port = True: expected an integer from 1 to 65535"),
        ("[bus]\ntcp_port = 80.5\n", "bus.tcp_port = 80.5: expected an integer from 1 to 65535"),
        ("[bus]\ntcp_enabled = 'yes'\n", "bus.tcp_enabled = 'yes': expected true or false"),
        ("[daemon]\ndrain_timeout_s = '5s'\n", "expected a number from 0.1 to 300"),
        ("[daemon]\ndrain_timeout_s = nan\n", "daemon.drain_timeout_s = nan: expected a number"),
        (
            "[bus]\ndurable = 'control.#'\n",
            "bus.durable = 'control.#': expected a list of topic patterns",
        ),
        ("[bus]\ndurable = ['a.#', 5]\n", "expected a list of topic patterns"),
        ("[bus]\nsocket_mode = 0o660\n", "bus.socket_mode = 432: expected an octal mode string"),
        # ranges and choices
        ("[daemon]\ndrain_timeout_s = 0.05\n", "expected a number from 0.1 to 300"),
        (
            "[daemon]\ndevice_id = '" + "x" * 65 + "'\n",
            "expected a string of at most 64 characters",
        ),
        (
            "[daemon]\nlog_level = 'verbose'\n",
            "daemon.log_level = 'verbose': expected one of debug, info, warning, error",
        ),
        ("[bus]\nrealtime_policy = 'drop'\n", "expected one of drop_oldest, keep_latest"),
        (
            "[bus]\nsocket_mode = '0999'\n",
            "bus.socket_mode = '0999': expected an octal mode string",
        ),
        ("[bus]\nsocket_mode = '1777'\n", 'from "0000" to "0777"'),
        ("[metrics]\nbind = 'localhost'\n", "metrics.bind = 'localhost': expected an IP address"),
        (
            "[paths]\nstate_dir = 'var/lib'\n",
            "paths.state_dir = 'var/lib': expected an absolute path",
        ),
        (
            "[bus]\nsocket = '/" + "s" * 120 + "'\n",
            "expected an absolute path of at most 107 bytes",
        ),
        # topic patterns
        (
            "[bus]\ndurable = ['control.#', 'bad topic']\n",
            "bus.durable[1] = 'bad topic': expected a topic pattern (",
        ),
        ("[bus]\ndurable = ['a.b#']\n", "a wildcard must be a whole segment"),
        (
            "[bus]\ndefault_qos = { 'audio.#' = 'fast' }\n",
            "bus.default_qos.\"audio.#\" = 'fast': expected one of realtime, batched, reliable",
        ),
        ("[bus]\ndefault_qos = { 'a..b' = 'realtime' }\n", "expected a topic pattern"),
        ("[bus]\ndefault_qos = { 'a' = 1 }\n", "expected a table of topic pattern ="),
        # cross-field
        (
            "[state]\nmap_size_mb = 2048\n",
            "state.max_map_size_mb = 1024: expected a value of at least state.map_size_mb (2048)",
        ),
    ],
)
def test_each_mistake_has_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(error_for(tmp_path, text))


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[bus]\ntcp_port = 1\ntcp_port 2\n")
    assert err.key == "<file>"
    assert "line 3" in str(err)
    assert str(err).endswith("expected valid TOML syntax")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "loomd.toml"
    path.write_bytes(b"[bus]\n# \xff\n")
    with pytest.raises(ConfigError, match="expected UTF-8 TOML text"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"{path}: <file> = No such file or directory: expected a readable TOML file"
    )


# --- paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "env", "euid", "expected"),
    [
        ("runtime", {"RUNTIME_DIRECTORY": "/run/loomd:/run/other"}, 0, "/run/loomd"),
        (
            "runtime",
            {"RUNTIME_DIRECTORY": "/run/x", "XDG_RUNTIME_DIR": "/run/user/1"},
            1000,
            "/run/x",
        ),
        ("runtime", {"XDG_RUNTIME_DIR": "/run/user/1000"}, 0, "/run/loomd"),
        ("runtime", {"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/loomd"),
        ("runtime", {"XDG_RUNTIME_DIR": "relative"}, 1000, "/tmp/loomd-1000"),
        ("runtime", {}, 1000, "/tmp/loomd-1000"),
        ("state", {"STATE_DIRECTORY": "/var/lib/loomd"}, 1000, "/var/lib/loomd"),
        ("state", {}, 0, "/var/lib/loomd"),
        ("state", {"XDG_STATE_HOME": "/h/st", "HOME": "/h"}, 1000, "/h/st/loomd"),
        ("state", {"HOME": "/home/pi"}, 1000, "/home/pi/.local/state/loomd"),
        ("cache", {"CACHE_DIRECTORY": "/var/cache/loomd"}, 1000, "/var/cache/loomd"),
        ("cache", {}, 0, "/var/cache/loomd"),
        ("cache", {"XDG_CACHE_HOME": "/h/c"}, 1000, "/h/c/loomd"),
        ("cache", {"HOME": "/home/pi"}, 1000, "/home/pi/.cache/loomd"),
    ],
)
def test_resolve_dir(kind: str, env: dict[str, str], euid: int, expected: str) -> None:
    assert resolve_dir(kind, "", env=env, euid=euid) == Path(expected)  # type: ignore[arg-type]


def test_configured_paths_win(tmp_path: Path) -> None:
    env = {"RUNTIME_DIRECTORY": "/run/loomd", "STATE_DIRECTORY": "/var/lib/loomd", "HOME": "/h"}
    path = write(
        tmp_path, f"[paths]\nruntime_dir = '{tmp_path}/run'\nstate_dir = '{tmp_path}/st'\n"
    )
    resolved = resolve_paths(load_config(path), env=env, euid=1000)
    assert resolved.runtime_dir == tmp_path / "run"
    assert resolved.state_dir == tmp_path / "st"
    assert resolved.bus_socket == tmp_path / "run" / "bus.sock"
    assert resolved.cache_dir == Path("/h/.cache/loomd")


def test_explicit_bus_socket() -> None:
    settings = Settings(bus=BusSettings(socket="/srv/loomd.sock"))
    assert settings.resolved.bus_socket == Path("/srv/loomd.sock")
    assert resolve_paths(settings, env={}, euid=0).bus_socket == Path("/srv/loomd.sock")
    assert resolve_paths(Settings(), env={}, euid=0).bus_socket == Path("/run/loomd/bus.sock")


def test_default_config_path(tmp_path: Path) -> None:
    system = tmp_path / "etc.toml"
    assert default_config_path({}, system) is None
    system.write_text("")
    assert default_config_path({}, system) == system
    assert default_config_path({"LOOMD_CONFIG": "/x.toml"}, system) == Path("/x.toml")
    assert load_config(system) == Settings()  # an empty file means all defaults


def test_cross_field_check_uses_final_values() -> None:
    assert StateSettings(map_size_mb=2048, max_map_size_mb=4096).max_map_size_mb == 4096
    with pytest.raises(ConfigError, match=r"at least state\.map_size_mb"):
        StateSettings(map_size_mb=8, max_map_size_mb=4)


def test_read_credential(tmp_path: Path) -> None:
    from loomd.config import read_credential

    (tmp_path / "llm-cloud-key").write_text("sk-secret\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_credential("llm-cloud-key", env) == "sk-secret"
    assert read_credential("missing", env) is None
    assert read_credential("llm-cloud-key", {}) is None  # not under systemd
    assert read_credential("", env) is None
    assert read_credential("../etc/passwd", env) is None  # a name, never a path
