"""`loomctl doctor`: one line per check of what a board needs, each with its fix.

Runs locally, without the daemon (one check asks it for its status). Each check is a small
function of a `Context`, independent of the others, run in its own thread with a deadline:
a check that crashes or hangs becomes a `fail` line naming its error and the rest still run.
The exit code is 1 when any check fails (a warning does not fail), 0 otherwise.

Hardware edges (thermal zones, the Raspberry Pi throttle file, /proc/asound, /dev/nvhost-*)
are read under `Context.hw_root`, so tests give a fake tree; everything else is real.

One module per concern of the board: `context` (verdicts, the `Context`, `Check`),
`daemon`, `models`, `board` (memory, temperature, throttling, disk), `system` (clock), and
`run` (the runner, the report, the CLI). A component's own checks live with it (the voice
component's audio check in `loomd/audio/doctor.py`, the MQTT bridge's in
`loomd/bridges/doctor.py`, the llm's in `loomd/router/doctor.py`) and are contributed through
the registry (`loomd.components.BUILTIN_DOCTOR`): a new check is a function of a `Context`
returning a `Verdict`, listed in its module's `CHECKS` (or, for the board, in
`run.BOARD_CHECKS`).
"""

from loomd.doctor.board import (
    check_disk,
    check_memory,
    check_temperature,
    check_throttling,
    decode_throttled,
    model_need_bytes,
)
from loomd.doctor.context import (
    Check,
    Context,
    Result,
    Status,
    Verdict,
    component_on,
    fail,
    load_context,
    ok,
    skip,
    warn,
)
from loomd.doctor.daemon import check_config, check_daemon, check_group, check_socket
from loomd.doctor.models import check_models, configured_models
from loomd.doctor.run import (
    BOARD_CHECKS,
    add_parser,
    all_checks,
    exit_code,
    format_results,
    main,
    run_checks,
)
from loomd.doctor.system import adjtimex, check_clock, clock_synced

__all__ = [
    "BOARD_CHECKS",
    "Check",
    "Context",
    "Result",
    "Status",
    "Verdict",
    "add_parser",
    "adjtimex",
    "all_checks",
    "check_clock",
    "check_config",
    "check_daemon",
    "check_disk",
    "check_group",
    "check_memory",
    "check_models",
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
    "ok",
    "run_checks",
    "skip",
    "warn",
]
