"""Components that exist only in the tests, registered through the `loomd.components`
entry point group exactly as a third-party package would register its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loomd.cli import op
from loomd.component import Command, Component, StatusBlock
from loomd.config import Section, option
from loomd.metrics import Family


@dataclass(frozen=True)
class ProbeSettings(Section):
    SECTION: ClassVar[str] = "probe"

    greeting: str = option("hello", reload=True)
    port: int = option(1, min=1, max=65535)  # stands for anything that needs a restart


@dataclass(frozen=True)
class ProbeStatus(StatusBlock):
    greeting: str
    port: int
    calls: int


class Probe(Component[ProbeSettings]):
    summary = "a test component"

    calls = 0
    healed = False

    async def start(self) -> None:
        self.stopping = asyncio.Event()

    def status(self) -> ProbeStatus:
        return ProbeStatus(self.settings.greeting, self.settings.port, self.calls)

    def metrics(self) -> Iterable[Family]:
        yield Family("loomd_probe_calls_total", "counter", "hello calls.", [({}, self.calls)])
        yield Family("probe_outside_its_prefix", "gauge", "skipped by the host.", [({}, 1.0)])

    def healthy(self) -> bool:
        return super().healthy() or self.healed

    def commands(self) -> Mapping[str, Command]:
        return {
            "hello": Command(self._hello, "greet someone", ("who",)),
            "crash": Command(self._crash, "crash a background task"),
            "heal": Command(self._heal, "report healthy again"),
            "hold": Command(self._hold, "pretend N work items are in flight", ("n",)),
        }

    held = 0

    def pending(self) -> int:
        return self.held

    async def _hold(self, n: int) -> dict[str, Any]:
        self.held = n
        return {}

    async def _hello(self, who: str) -> dict[str, Any]:
        self.calls += 1
        return {"text": f"{self.settings.greeting}, {who}"}

    async def _crash(self) -> dict[str, Any]:
        self.healed = False

        async def boom() -> None:
            raise RuntimeError("probe task exploded")

        self.spawn(boom, "boom")
        return {}

    async def _heal(self) -> dict[str, Any]:
        self.healed = True
        return {}


@dataclass(frozen=True)
class NeedySettings(Section):
    SECTION: ClassVar[str] = "needy"

    enabled: bool = option(True)


class Needy(Component[NeedySettings]):
    requires = ("loomd_test_no_such_module",)
    extra = "needy"
    apt = "loomd-needy"
    summary = "needs a package that is not installed"


def add_cli(cmds: Any) -> None:
    """`loomctl greet WHO`: a friendly command, registered through the `loomd.cli` group."""
    g = cmds.add_parser("greet", help="greet someone through probe.hello")
    g.add_argument("who")
    g.set_defaults(func=_greet)


async def _greet(bus: Any, args: Any) -> int:
    print((await op(bus, "probe.hello", args.who))["text"])
    return 0


def _check_port(ctx: Any) -> Any:
    from loomd.doctor.context import ok, warn

    port = ctx.section("probe").port
    if port < 1024:
        return warn(f"probe port {port} is privileged", "set [probe] port >= 1024")
    return ok(f"probe port {port}")


def doctor_checks() -> Any:
    from loomd.doctor.context import Check

    return (Check("probe port", _check_port),)


DOCTOR = doctor_checks()
