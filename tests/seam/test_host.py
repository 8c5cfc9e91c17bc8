"""The host in process, with the real state and bus components: supervision of background
tasks (crash -> loomd.error + unhealthy, restart with backoff, crash loop given up), the
control plane, and the stop phases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import uvloop

from loomd.component import Command, Component
from loomd.components import BUILTIN, Entry, Registry
from loomd.config import PathSettings, ResolvedPaths, Section, Switch, option, switch
from loomd.errors import ConfigError, LoomdError
from loomd.host import Host
from loomd.settings import Settings


@dataclass(frozen=True)
class FlakySettings(Section):
    SECTION: ClassVar[str] = "flaky"
    fails: int = option(2, min=0, max=100)


class Flaky(Component[FlakySettings]):
    """Spawns a restartable task that fails `fails` times, then runs until cancelled."""

    backoff_s = (0.01, 0.02)
    crash_limit = 4

    async def start(self) -> None:
        self.runs = 0
        self.running = asyncio.Event()
        self.task = self.spawn(self._work, "work", restart=True)

    async def _work(self) -> None:
        self.runs += 1
        if self.runs <= self.settings.fails:
            raise ValueError(f"run {self.runs} failed")
        self.running.set()
        await asyncio.Event().wait()

    def commands(self) -> Mapping[str, Command]:
        return {"runs": Command(self._runs, "how many runs"), "oops": Command(self._oops)}

    async def _oops(self) -> dict[str, Any]:
        async def one_request() -> None:
            raise KeyError("bad request")

        await self.spawn(one_request, "request-1", critical=False)
        return {}

    async def _runs(self) -> dict[str, Any]:
        return {"runs": self.runs}


def run(fn: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(fn())


def host_for(tmp: Path, **sections: Any) -> Host:
    reg = Registry(
        [Entry(n, BUILTIN[n], "builtin") for n in ("state", "bus")]
        + [Entry("flaky", f"{__name__}:Flaky", "test")]
    )
    defaults = Settings()
    settings = Settings.of(
        {
            "daemon": defaults.daemon,
            "paths": PathSettings(runtime_dir=str(tmp / "run"), state_dir=str(tmp / "st")),
            "bus": defaults.bus,
            "state": defaults.state,
            "flaky": FlakySettings(**sections),
        }
    )
    return Host(settings, reg=reg)


def test_a_restartable_task_comes_back_and_each_crash_is_an_error_event(short_tmp: Path) -> None:
    async def main() -> None:
        async with host_for(short_tmp, fails=2) as host:
            assert host.services.broker is not None
            errors = host.services.broker.subscribe("loomd.error", "reliable")
            flaky = host.get("flaky")
            assert isinstance(flaky, Flaky)
            async with asyncio.timeout(10):
                await flaky.running.wait()
            assert host.healthy() and flaky.runs == 3
            reply = await host.control(None, {"op": "flaky.runs"})
            assert reply == {"runs": 3}
            # the first crash may precede the subscription; the second is after it, or both
            ev = await errors.get(timeout=5)
            assert ev.payload["code"] == "task_crashed" and "flaky" in ev.payload["message"]
            assert [c.error for c in flaky.crashes] == [
                "ValueError: run 1 failed",
                "ValueError: run 2 failed",
            ]

    run(main)


def test_a_crash_loop_is_given_up_and_turns_the_component_unhealthy(short_tmp: Path) -> None:
    async def main() -> None:
        async with host_for(short_tmp, fails=100) as host:
            flaky = host.get("flaky")
            assert isinstance(flaky, Flaky)
            async with asyncio.timeout(10):
                await flaky.task  # the supervisor gives up: the task ends
            assert not flaky.healthy()
            assert len(flaky.crashes) == 4
            assert host.unhealthy() == ["flaky: task work crashed 4 times in 60 s; gave up"]
            assert host.status()["components"]["flaky"]["healthy"] is False

    run(main)


def test_control_plane_errors_are_clear(short_tmp: Path) -> None:
    async def main() -> None:
        async with host_for(short_tmp) as host:
            for msg, text in [
                ({"op": "nope"}, "unknown op 'nope'"),
                ({"op": "zz.x"}, "no component named 'zz'"),
                ({"op": "flaky.zz"}, "flaky has no operation 'zz' (operations: oops, runs)"),
                ({"op": "flaky.runs", "extra": 1}, "bad arguments"),
                ({"op": "state.get", "args": [""]}, "a state key must be a non-empty string"),
            ]:
                with pytest.raises(LoomdError, match=text.replace("(", r"\(").replace(")", r"\)")):
                    await host.control(None, msg)
            assert await host.control(None, {"op": "state.put", "args": ["k", {"v": 1}]}) == {}
            got = await host.control(None, {"op": "state.get", "args": ["k"]})
            assert got == {"found": True, "value": {"v": 1}}
            assert sorted(host.commands()) == [
                "bus.listeners",
                "bus.stats",
                "flaky.oops",
                "flaky.runs",
                "state.del",
                "state.get",
                "state.ls",
                "state.put",
            ]

    run(main)


def test_a_crash_in_per_request_work_is_reported_and_leaves_the_component_healthy(
    short_tmp: Path,
) -> None:
    async def main() -> None:
        async with host_for(short_tmp, fails=0) as host:
            assert host.services.broker is not None
            errors = host.services.broker.subscribe("loomd.error", "reliable")
            assert await host.control(None, {"op": "flaky.oops"}) == {}
            ev = await errors.get(timeout=5)
            assert "task request-1 crashed: KeyError" in ev.payload["message"]
            assert host.healthy() and host.status()["components"]["flaky"]["healthy"]

    run(main)


@dataclass(frozen=True)
class ModelUserSettings(Section):
    SECTION: ClassVar[str] = "modeluser"
    enabled: Switch = switch()
    model: str = option("kind/model.bin")


class ModelUser(Component[ModelUserSettings]):
    """Needs one model file under the models dir, as voice and llm do."""

    @classmethod
    def check(cls, settings: ModelUserSettings, paths: ResolvedPaths) -> list[str]:
        path = paths.models_dir / settings.model
        return [] if path.is_file() else [f"no model at {path}"]

    async def start(self) -> None:
        self.loaded = (self.ctx.models_dir / self.settings.model).read_bytes()


def test_auto_starts_a_component_when_its_models_arrive_and_stops_it_when_they_go(
    short_tmp: Path,
) -> None:
    reg = Registry(
        [Entry(n, BUILTIN[n], "builtin") for n in ("state", "bus")]
        + [Entry("modeluser", f"{__name__}:ModelUser", "test")]
    )
    defaults = Settings()
    models = short_tmp / "models"
    settings = Settings.of(
        {
            "daemon": defaults.daemon,
            "paths": PathSettings(
                runtime_dir=str(short_tmp / "run"),
                state_dir=str(short_tmp / "st"),
                models_dir=str(models),
            ),
            "bus": defaults.bus,
            "state": defaults.state,
            "modeluser": ModelUserSettings(),
        }
    )

    async def main() -> None:
        async with Host(settings, reg=reg) as host:
            slot = host.slots["modeluser"]
            assert (slot.state, slot.reason) == (
                "disabled",
                f"auto: no model at {models / 'kind/model.bin'}",
            )
            (models / "kind").mkdir(parents=True)
            (models / "kind/model.bin").write_bytes(b"weights")
            applied, _ = await host.reload(settings)  # nothing in the file changed
            assert applied == ["modeluser.enabled"] and slot.state == "running"
            assert host.get("modeluser").loaded == b"weights"  # type: ignore[union-attr]
            (models / "kind/model.bin").unlink()
            applied, _ = await host.reload(settings)
            assert applied == ["modeluser.enabled"] and slot.state == "disabled"
            # Explicit false stays off whatever is installed.
            (models / "kind/model.bin").write_bytes(b"weights")
            off = settings.replace(modeluser=ModelUserSettings(enabled=False))
            await host.reload(off)
            assert slot.state == "disabled" and host.get("modeluser") is None

    run(main)


def test_a_switch_takes_true_false_or_auto_only() -> None:
    assert ModelUserSettings(enabled=True).enabled is True
    assert ModelUserSettings(enabled="auto").enabled == "auto"
    with pytest.raises(
        ConfigError, match=r'modeluser.enabled = .*: expected true, false or "auto"'
    ):
        ModelUserSettings(enabled="yes")
    with pytest.raises(ConfigError):
        ModelUserSettings(enabled=1)
