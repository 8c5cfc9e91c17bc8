"""The rest of the system: the clock."""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess

from loomd.doctor.context import Context, Verdict, ok, skip, warn

# -- cloud key ---------------------------------------------------------------------------


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
