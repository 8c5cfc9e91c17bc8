"""The rest of the system: the cloud key, the clock, the GPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import shutil
import subprocess
from pathlib import Path

from loomd.doctor.context import Context, Verdict, ok, skip, warn
from loomd.errors import LoomdError

# -- cloud key ---------------------------------------------------------------------------


def check_cloud_key(ctx: Context) -> Verdict:
    """Whether the cloud key exists. Never reads it into the output: not the key, not its
    length, not a prefix."""
    llm = ctx.section("llm")
    if llm is None or not llm.cloud.base_url:
        return skip("no cloud configured ([llm.cloud] base_url)")
    c = llm.cloud
    places = []
    cred = ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred and c.key_name:
        places.append(Path(cred) / c.key_name)
    # Outside the unit there is no $CREDENTIALS_DIRECTORY: look where LoadCredential= reads.
    places += [Path("/etc/credstore") / c.key_name, Path("/etc/loomd/credentials") / c.key_name]
    for p in places:
        try:
            if p.is_file() and p.stat().st_size > 0:
                return ok(f"key present in {p} (not shown)")
        except PermissionError:
            return ok(f"{p} exists (not readable by this user, not shown)")
    if c.key_env and ctx.env.get(c.key_env, "").strip():
        return ok(f"key present in ${c.key_env} (not shown)")
    return warn(
        f"no key for {c.base_url}: none in $CREDENTIALS_DIRECTORY/{c.key_name} or ${c.key_env}",
        f"sudo install -D -m 0600 /dev/stdin /etc/credstore/{c.key_name} (paste the key, "
        f"Ctrl-D); add LoadCredential={c.key_name} to the unit (systemctl edit loomd)",
    )


# -- clock -------------------------------------------------------------------------------

STA_UNSYNC = 0x0040
TIME_ERROR = 5
# Above this the kernel's own estimate says the clock is not trustworthy (NTP's 16 s).
MAX_ERROR_US = 16_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def adjtimex() -> tuple[int, int, int] | None:
    """(return state, status bits, maxerror in µs) from the kernel, read-only (modes = 0)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    tx = _Timex()
    state = int(libc.adjtimex(ctypes.byref(tx)))
    if state < 0:
        return None
    return state, int(tx.status), int(tx.maxerror)


def clock_synced(state: int, status: int, maxerror_us: int) -> bool:
    return state != TIME_ERROR and not status & STA_UNSYNC and maxerror_us < MAX_ERROR_US


def check_clock(ctx: Context) -> Verdict:
    fix = "sudo timedatectl set-ntp true (needs systemd-timesyncd or chrony, and network)"
    kernel = adjtimex()
    if kernel is not None:
        state, status, maxerror = kernel
        if clock_synced(state, status, maxerror):
            return ok(f"synchronised (kernel: max error {maxerror / 1000:.0f} ms)")
        # The kernel flag lags behind chrony in some containers: ask timedatectl too.
    answer = _timedatectl()
    if answer == "yes":
        return ok("synchronised (timedatectl)")
    if kernel is None and answer is None:
        return skip("neither adjtimex nor timedatectl answered")
    detail = (
        f" (kernel status 0x{kernel[1]:x}, max error {kernel[2] / 1e6:.1f} s)" if kernel else ""
    )
    return warn(
        "not synchronised" + detail + ": TLS, MQTT certificates and logs need the time", fix
    )


def _timedatectl() -> str | None:
    if not shutil.which("timedatectl"):
        return None
    try:
        r = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


# -- GPU ---------------------------------------------------------------------------------


def check_gpu(ctx: Context) -> Verdict:
    devs = sorted(p.name for p in ctx.hw("dev").glob("nvhost-*"))
    smi = shutil.which("nvidia-smi") if ctx.hw_root == Path("/") else None
    if not devs and not smi:
        return skip("no GPU (no /dev/nvhost-*, no nvidia-smi)")
    found = "Jetson (" + ", ".join(devs[:3]) + ")" if devs else "NVIDIA GPU (nvidia-smi)"
    llm = ctx.section("llm")
    layers = llm.gpu_layers if llm is not None else 0
    if importlib.util.find_spec("llama_cpp") is None:
        return warn(
            f"{found}; llama-cpp-python is not installed",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return warn(
            f"{found}; this llama-cpp-python build has no GPU offload",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    if layers == 0:
        return warn(
            f"{found}; the build offloads but [llm] gpu_layers = 0",
            f"set [llm] gpu_layers = 999 in {ctx.config_path or 'loomd.toml'}, then "
            "sudo systemctl restart loomd",
        )
    used = _gpu_in_use(ctx)
    return ok(f"{found}; offload build, gpu_layers = {layers}; {used}")


def _gpu_in_use(ctx: Context) -> str:
    """What the running llm component says about offload (`LlmStatus.gpu_layers`)."""
    try:
        comp = ctx.daemon_status()["components"].get("llm") or {}
    except LoomdError:
        return "daemon not running: cannot tell whether layers are offloaded"
    st = comp.get("status") or {}
    if not st.get("loaded"):
        return "the model is not loaded yet: no layers offloaded"
    layers = int(st.get("gpu_layers") or 0)
    if layers:
        return f"GPU used: {layers} layers offloaded"
    return "GPU not used: all layers on the CPU"
