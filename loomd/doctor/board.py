"""The board: memory for the configured models, temperature and throttling, disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from loomd.doctor.context import (
    MB,
    Context,
    Verdict,
    fail,
    ok,
    size_text,
    skip,
    unit_installed,
    warn,
)
from loomd.doctor.models import configured_models
from loomd.errors import LoomdError

# -- memory ------------------------------------------------------------------------------

# Resident memory beyond the model file (weights are mapped, so the file counts in full),
# imports included, measured with the test models in a fresh process (docs/design/doctor.md):
# llama.cpp ~56 MB besides its KV cache, whisper.cpp ~100 MB, Piper ~80 MB, openWakeWord
# ~180 MB (it imports scipy and scikit-learn). The daemon itself is BASE.
OVERHEAD = {"llm": 56 * MB, "stt": 100 * MB, "tts": 80 * MB, "wake": 180 * MB}
BASE = 60 * MB


def model_need_bytes(ctx: Context) -> dict[str, int]:
    """Bytes each configured model role needs resident: the files (weights are mapped, so
    they count in full) plus its runtime's overhead, plus the LLM's KV cache."""
    need: dict[str, int] = {}
    for m in configured_models(ctx):
        try:
            if not m.path.is_file():
                continue
        except PermissionError:  # the models check names it; count what can be seen
            continue
        need[m.role] = need.get(m.role, OVERHEAD[m.role]) + m.path.stat().st_size
        if m.role == "llm":
            from loomd.router.facts import read_gguf_shape

            try:
                need["llm"] += read_gguf_shape(m.path).kv_bytes(ctx.section("llm").context)
            except LoomdError:
                pass
    return need


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _cgroup_limit(pid: int | None) -> tuple[int | None, int]:
    """The tightest memory.max over the daemon's cgroup and its parents, and the memory the
    cgroup already uses; (None, 0) where there is no limit or it cannot be read."""
    cg = None
    if pid is not None:
        try:
            rel = Path(f"/proc/{pid}/cgroup").read_text().strip().splitlines()[-1]
            cg = Path("/sys/fs/cgroup") / rel.split(":", 2)[-1].lstrip("/")
        except (OSError, IndexError):
            cg = None
    if cg is None:
        unit = Path("/sys/fs/cgroup/system.slice/loomd.service")
        cg = unit if unit.is_dir() else None
    best: tuple[int | None, int] = (None, 0)
    while cg is not None and cg != Path("/sys/fs/cgroup") and cg.is_dir():
        try:
            limit = (cg / "memory.max").read_text().strip()
            if limit != "max" and (best[0] is None or int(limit) < best[0]):
                best = (int(limit), int((cg / "memory.current").read_text().strip()))
        except (OSError, ValueError):
            pass
        cg = cg.parent
    return best


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_memory(ctx: Context) -> Verdict:
    need = model_need_bytes(ctx)
    mem = meminfo()
    pid = None
    try:
        pid = int(ctx.daemon_status()["daemon"]["pid"])
    except (LoomdError, KeyError, ValueError):
        pass
    # A running daemon may hold its models already: what it uses now is its to reuse.
    held = _rss(pid) if pid is not None else 0
    budget = mem.get("MemAvailable", 0) + held
    where = "MemAvailable" + (" + the daemon's RSS" if held else "")
    limit, used = _cgroup_limit(pid)
    if limit is not None:
        room = limit - used + (held if pid is not None else 0)
        if room < budget:
            budget, where = room, "the unit's MemoryMax"
    elif unit_installed() and mem.get("MemTotal"):
        cap = int(mem["MemTotal"] * 0.8)  # the unit's MemoryMax=80%, not yet in effect
        if cap < budget:
            budget, where = cap, "MemoryMax=80% of RAM"
    if not need:
        return ok(f"no local models configured; {size_text(budget)} available ({where})")
    need = {"loomd": BASE, **need}
    total_need = sum(need.values())
    parts = ", ".join(f"{k} {size_text(v)}" for k, v in need.items())
    head = f"need ~{size_text(total_need)} ({parts}); {size_text(budget)} available ({where})"
    if total_need > budget:
        return fail(
            head,
            "use smaller models (whisper tiny.en, a smaller GGUF) or a smaller "
            "[llm] context; stop other services",
        )
    if total_need > 0.8 * budget:
        return warn(
            head + "; under 20% to spare",
            "use a smaller [llm] context or model; stop other services",
        )
    return ok(head)


# -- temperature and throttling ----------------------------------------------------------

TEMP_WARN_C = 70.0
TEMP_FAIL_C = 80.0


def check_temperature(ctx: Context) -> Verdict:
    temps: list[tuple[float, str]] = []
    for path in sorted(ctx.hw("sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            temps.append((int(path.read_text().strip()) / 1000.0, path.parent.name))
        except (OSError, ValueError):
            continue
    if not temps:
        return skip("no thermal zones in /sys/class/thermal")
    c, zone = max(temps)
    text = f"{c:.1f} °C ({zone}, hottest of {len(temps)})"
    fix = "improve cooling: a heatsink or fan, a ventilated case; check load with top"
    if c >= TEMP_FAIL_C:
        return fail(text + f" >= {TEMP_FAIL_C:.0f} °C: the CPU throttles", fix)
    if c >= TEMP_WARN_C:
        return warn(text + f" >= {TEMP_WARN_C:.0f} °C", fix)
    return ok(text)


# Raspberry Pi firmware `get_throttled` bits: (bit, what, is it a failure when current).
THROTTLE_BITS = (
    (0, "under-voltage", True),
    (1, "ARM frequency capped", False),
    (2, "throttled", True),
    (3, "soft temperature limit", False),
)


def decode_throttled(value: int) -> tuple[list[str], list[str]]:
    """(conditions now, conditions since boot) from the firmware's bit field: bits 0-3 are
    now, bits 16-19 the same conditions at any time since boot."""
    now = [what for bit, what, _ in THROTTLE_BITS if value & (1 << bit)]
    since = [what for bit, what, _ in THROTTLE_BITS if value & (1 << (bit + 16))]
    return now, since


def _read_throttled(ctx: Context) -> int | None:
    if ctx.hw_root == Path("/") and shutil.which("vcgencmd"):
        out = subprocess.run(
            ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2, check=False
        ).stdout
        if "=" in out:
            return int(out.split("=", 1)[1].strip(), 16)
    path = ctx.hw("sys/devices/platform/soc/soc:firmware/get_throttled")
    try:
        return int(path.read_text().strip(), 16)
    except FileNotFoundError:
        return None


def check_throttling(ctx: Context) -> Verdict:
    value = _read_throttled(ctx)
    if value is None:
        return skip("not a Raspberry Pi (no vcgencmd, no firmware get_throttled)")
    now, since = decode_throttled(value)
    text = f"0x{value:x}: now {', '.join(now) or 'none'}; since boot {', '.join(since) or 'none'}"
    power = "use the official supply (5 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) and a short cable"
    cool = "improve cooling: a heatsink or fan"
    seen = {*now, *since}
    fix = "; ".join(
        [
            *([power] if "under-voltage" in seen else []),
            *([cool] if seen - {"under-voltage"} else []),
        ]
    )
    hard = [what for bit, what, hard in THROTTLE_BITS if hard and value & (1 << bit)]
    if hard:
        return fail(text, fix)
    if now or since:
        return warn(text, fix)
    return ok(text)


# -- disk --------------------------------------------------------------------------------


def check_disk(ctx: Context) -> Verdict:
    dirs = dict.fromkeys([ctx.state_dir, ctx.models_dir])
    worst: tuple[int, Path] | None = None
    for d in dirs:
        probe = d
        while True:
            try:
                free = shutil.disk_usage(probe).free
                break
            except (FileNotFoundError, PermissionError):
                # not created yet, or not ours to enter: the filesystem it is (will be) on
                if probe == probe.parent:
                    raise
                probe = probe.parent
        if worst is None or free < worst[0]:
            worst = (free, d)
    if worst is None:
        return skip(f"may not look at {', '.join(map(str, dirs))}")
    free, d = worst
    text = f"{size_text(free)} free for {d}"
    fix = (
        "free space: sudo journalctl --vacuum-size=100M; sudo apt clean; "
        "loomctl models remove ID (unused models)"
    )
    if free < ctx.disk_fail_bytes:
        return fail(text + f" (< {size_text(ctx.disk_fail_bytes)})", fix)
    if free < ctx.disk_warn_bytes:
        return warn(text + f" (< {size_text(ctx.disk_warn_bytes)})", fix)
    return ok(text)
