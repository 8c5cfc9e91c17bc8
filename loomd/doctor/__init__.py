"""`loomctl doctor`: one line per check of what a board needs, each with its fix.

Runs locally, without the daemon (one check asks it for its status). Each check is a small
function of a `Context`, independent of the others, run in its own thread with a deadline:
a check that crashes or hangs becomes a `fail` line naming its error and the rest still run.
The exit code is 1 when any check fails (a warning does not fail), 0 otherwise.

Hardware edges (thermal zones, the Raspberry Pi throttle file, /proc/asound, /dev/nvhost-*)
are read under `Context.hw_root`, so tests give a fake tree; everything else is real.

One module per concern: `context` (verdicts, the `Context`), `daemon`, `audio`, `models`,
`board` (memory, temperature, throttling, disk), `mqtt`, `system` (cloud key, clock, GPU),
and `run` (the runner, the report, the CLI). A new check is a function of a `Context`
returning a `Verdict`, in the module of its concern, listed in `run.CHECKS`.
"""

from loomd.doctor.audio import check_audio, component_on, sound_cards
from loomd.doctor.board import (
    check_disk,
    check_memory,
    check_temperature,
    check_throttling,
    decode_throttled,
    model_need_bytes,
)
from loomd.doctor.context import (
    Context,
    Result,
    Status,
    Verdict,
    fail,
    load_context,
    ok,
    skip,
    warn,
)
from loomd.doctor.daemon import check_config, check_daemon, check_group, check_socket
from loomd.doctor.models import check_llm_choice, check_models, configured_models
from loomd.doctor.mqtt import check_mqtt, mqtt_connect_packet, mqtt_probe
from loomd.doctor.run import CHECKS, Check, add_parser, exit_code, format_results, main, run_checks
from loomd.doctor.system import adjtimex, check_clock, check_cloud_key, check_gpu, clock_synced

__all__ = [
    "CHECKS",
    "Check",
    "Context",
    "Result",
    "Status",
    "Verdict",
    "add_parser",
    "adjtimex",
    "check_audio",
    "check_clock",
    "check_cloud_key",
    "check_config",
    "check_daemon",
    "check_disk",
    "check_gpu",
    "check_group",
    "check_llm_choice",
    "check_memory",
    "check_models",
    "check_mqtt",
    "check_socket",
    "check_temperature",
    "check_throttling",
    "clock_synced",
    "component_on",
    "configured_models",
    "decode_throttled",
    "exit_code",
    "fail",
    "format_results",
    "load_context",
    "main",
    "model_need_bytes",
    "mqtt_connect_packet",
    "mqtt_probe",
    "ok",
    "run_checks",
    "skip",
    "sound_cards",
    "warn",
]
