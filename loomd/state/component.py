"""The `state` component: opens the LMDB store for everyone, serves `state.get|put|del|ls`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loomd.bus.acl import Forbidden, current_caller
from loomd.component import Command, Component, StatusBlock
from loomd.errors import LoomdError
from loomd.messages import ErrorCode
from loomd.metrics import Family
from loomd.state.settings import StateSettings
from loomd.state.store import State

__all__ = ["StateComponent", "StateStatus"]

_MISSING = object()


@dataclass(frozen=True)
class StateStatus(StatusBlock):
    path: str
    used_bytes: int
    map_size: int
    journal_entries: int
    journal_head: int
    commits: int
    pending: int
    errors: int
    kv_bytes: int = 0
    quotas: dict[str, int] | None = None
    quota_refused: int = 0

    def lines(self) -> list[str]:
        quota = self.quotas or {}
        return [
            f"kv {self.kv_bytes / 1e6:.1f} MB of {quota.get('kv_max_bytes', 0) / 1e6:.0f} MB, "
            f"{quota.get('namespace_max_bytes', 0) / 1e6:.0f} MB per namespace; "
            f"{self.quota_refused} writes refused over quota",
            f"{self.used_bytes / 1e6:.1f} MB used of {self.map_size / 1e6:.0f} MB, "
            f"{self.journal_entries} journal entries (head {self.journal_head})",
            f"{self.commits} commits, {self.pending} writes pending, {self.errors} errors",
        ]


class StateComponent(Component[StateSettings]):
    summary = "LMDB key-value state and the durable journal"

    store: State | None = None

    async def start(self) -> None:
        s = self.settings
        store = State(
            self.ctx.state_dir / "db",
            map_size_mb=s.map_size_mb,
            max_map_size_mb=s.max_map_size_mb,
            commit_window_ms=s.commit_window_ms,
            journal_max_mb=s.journal_max_mb,
            journal_max_age_s=float(s.journal_max_age_s),
            namespace_max_mb=s.namespace_max_mb,
            kv_max_mb=s.kv_max_mb,
            identity_max_mb=s.identity_max_mb,
        )
        await store.__aenter__()
        self.store = store
        self.ctx.services.state = store

    async def stop(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            self.ctx.services.state = None
            await store.__aexit__(None, None, None)

    async def reload(self, new: StateSettings) -> list[str]:
        self.ctx.settings = new
        if self.store is not None:
            self.store.quota.namespace_limit = new.namespace_max_mb * 1024 * 1024
            self.store.quota.total_limit = new.kv_max_mb * 1024 * 1024
            self.store.quota.identity_limit = new.identity_max_mb * 1024 * 1024
        return []

    def pending(self) -> int:
        return int(self.store.stats().get("pending", 0)) if self.store else 0

    def status(self) -> StateStatus | None:
        if self.store is None:
            return None
        st = self.store.stats()
        return StateStatus(
            path=st["path"],
            used_bytes=st["used_bytes"],
            map_size=st["map_size"],
            journal_entries=st["journal_entries"],
            journal_head=st["journal_head"],
            commits=st["commits"],
            pending=st["pending"],
            errors=st["errors"],
            kv_bytes=st["kv_bytes"],
            quotas={
                "namespace_max_bytes": self.store.quota.namespace_limit,
                "kv_max_bytes": self.store.quota.total_limit,
                "identity_max_bytes": self.store.quota.identity_limit,
            },
            quota_refused=st["quota_refused"],
        )

    def metrics(self) -> Iterable[Family]:
        if self.store is None:
            return
        st = self.store.stats()
        yield Family(
            "loomd_state_used_bytes", "gauge", "LMDB bytes in use.", [({}, float(st["used_bytes"]))]
        )
        yield Family(
            "loomd_state_journal_entries",
            "gauge",
            "Durable journal entries retained.",
            [({}, float(st["journal_entries"]))],
        )
        yield Family(
            "loomd_state_commits_total",
            "counter",
            "LMDB write transactions.",
            [({}, float(st["commits"]))],
        )

    # -- control ------------------------------------------------------------------------------
    def commands(self) -> Mapping[str, Command]:
        return {
            "get": Command(self._get, "read one key", ("key", "ns")),
            "put": Command(self._put, "write one key (a JSON value)", ("key", "value", "ns")),
            "del": Command(self._del, "delete one key", ("key", "ns")),
            "ls": Command(self._ls, "list keys, optionally by prefix", ("prefix", "ns")),
        }

    def _kv(self, ns: Any) -> Any:
        if self.store is None:
            raise LoomdError("state is not open")
        if not isinstance(ns, str) or not ns:
            raise LoomdError("state namespace must be a non-empty string")
        caller = current_caller()  # a socket client's identity (None: the daemon itself)
        if caller is not None and not caller.grants.may_state(ns):
            self.ctx.error(ErrorCode.FORBIDDEN, f"{caller.label} may not use state {ns!r}")
            raise Forbidden(f"{caller.label} may not use state namespace {ns!r}")
        return self.store.kv(ns)

    @staticmethod
    def _check_key(key: Any) -> str:
        if not isinstance(key, str) or not key:
            raise LoomdError("a state key must be a non-empty string")
        return key

    async def _get(self, key: Any, ns: Any = "user") -> dict[str, Any]:
        value = self._kv(ns).get(self._check_key(key), _MISSING)
        return {"found": False} if value is _MISSING else {"found": True, "value": value}

    async def _put(self, key: Any, value: Any = None, ns: Any = "user") -> dict[str, Any]:
        await self._kv(ns).put(self._check_key(key), value, who=_quota_holder())
        return {}

    async def _del(self, key: Any, ns: Any = "user") -> dict[str, Any]:
        return {"deleted": await self._kv(ns).delete(self._check_key(key), who=_quota_holder())}

    async def _ls(self, prefix: Any = "", ns: Any = "user") -> dict[str, Any]:
        return {"keys": self._kv(ns).keys(str(prefix or ""))}


def _quota_holder() -> str | None:
    """Whose state quota a client's write counts against: its identity (None for the
    daemon's own parts, root and the daemon's user, which are not limited)."""
    caller = current_caller()
    if caller is None or caller.identity.superuser:
        return None
    return caller.identity.label
