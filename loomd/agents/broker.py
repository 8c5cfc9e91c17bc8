"""The action broker: capabilities by name and version, one deterministic resolution, params
checked against the schema before a provider runs, deadlines, idempotency keys kept in LMDB,
and result codes that say whose fault a failure was."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import cbor2

from loomd.agents.capability import CapabilitySpec, check_params, parse_name
from loomd.errors import CallError, LoomdError
from loomd.messages import CapCode as Code
from loomd.messages import CapResult as Result
from loomd.messages import ErrorCode

if TYPE_CHECKING:
    from loomd.bus.acl import Caller
    from loomd.state.kv import KV

__all__ = [
    "ActionBroker",
    "CallError",
    "CapabilityError",
    "Code",
    "InvalidParams",
    "LocalProvider",
    "Provider",
    "ProviderUnavailable",
    "Result",
    "unless_gone",
]

log = logging.getLogger("loomd.agents.broker")

# How the agents' parts report an error: (code, message, details) -> `loomd.error`.
Report = Callable[[ErrorCode, str, dict[str, Any]], None]


class CapabilityError(Exception):
    """Raise from a capability to say "I cannot do that" (code `capability_error`), as
    opposed to a bug (any other exception: code `error`)."""


class ProviderUnavailable(Exception):
    """The provider is gone (an SDK client died, an MCP server exited)."""


class InvalidParams(Exception):
    """A provider found the params bad after all (an MCP server's own check)."""


class Provider:
    """Something that runs capabilities. `invoke` gets the time left (seconds)."""

    id: str = ""
    kind: str = ""

    async def invoke(self, spec: CapabilitySpec, params: dict[str, Any], left: float) -> Any:
        raise NotImplementedError


T = TypeVar("T")


async def unless_gone(call: asyncio.Future[T], dead: asyncio.Future[None], what: str) -> T:
    """`call`'s result, unless its provider dies first (`dead` completes): then the call is
    cancelled and awaited, and `ProviderUnavailable` says `what` went away during it.
    Cancelling the caller cancels the call."""
    try:
        await asyncio.wait((call, dead), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        call.cancel()
        raise
    if not call.done():
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        raise ProviderUnavailable(f"{what} went away during the call")
    return call.result()


class LocalProvider(Provider):
    """In-process Python functions. Sync functions run inline on the loop (they must be
    quick: use `ctx.run_blocking` inside an async capability for blocking work)."""

    kind = "local"

    def __init__(self, pid: str) -> None:
        self.id = pid
        self.fns: dict[str, Callable[..., Any]] = {}

    def add(self, spec: CapabilitySpec, fn: Callable[..., Any]) -> None:
        self.fns[spec.full] = fn

    async def invoke(self, spec: CapabilitySpec, params: dict[str, Any], left: float) -> Any:
        result = self.fns[spec.full](**params)
        if inspect.isawaitable(result):
            result = await result
        return result


@dataclass
class Entry:
    spec: CapabilitySpec
    provider: Provider
    calls: int = 0
    failures: int = 0


@dataclass
class _Stats:
    calls: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    idempotent_hits: int = 0
    forbidden: int = 0


class ActionBroker:
    """Capabilities of every provider. `call` never raises for a provider's failure: the
    outcome is a `Result` with a code."""

    def __init__(
        self,
        *,
        idem: KV | None = None,
        idem_ttl_s: float = 86400.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._caps: dict[str, dict[int, Entry]] = {}
        self._idem = idem
        self.idem_ttl_s = idem_ttl_s
        self._idem_inflight: dict[str, asyncio.Future[Result]] = {}
        self.inflight = 0
        self.stats = _Stats()
        self._on_change = on_change

    # -- registry ---------------------------------------------------------------------------
    def register(self, spec: CapabilitySpec, provider: Provider) -> None:
        versions = self._caps.setdefault(spec.name, {})
        have = versions.get(spec.version)
        if have is not None:
            raise LoomdError(
                f"capability {spec.full} is already provided by {have.provider.kind} "
                f"{have.provider.id!r}; {provider.kind} {provider.id!r} may not register it again"
            )
        versions[spec.version] = Entry(spec, provider)
        if self._on_change:
            self._on_change()

    def unregister_provider(self, provider: Provider) -> list[str]:
        gone = []
        for name, versions in list(self._caps.items()):
            for v, e in list(versions.items()):
                if e.provider is provider:
                    del versions[v]
                    gone.append(e.spec.full)
            if not versions:
                del self._caps[name]
        if gone and self._on_change:
            self._on_change()
        return gone

    def resolve(self, name: str) -> Entry | None:
        """Highest version unless one is named: deterministic whatever the order of
        registration."""
        base, version = parse_name(name)
        versions = self._caps.get(base)
        if not versions:
            return None
        if version is None:
            return versions[max(versions)]
        return versions.get(version)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self._caps):
            for v in sorted(self._caps[name]):
                e = self._caps[name][v]
                out.append(
                    e.spec.to_dict()
                    | {"provider": e.provider.id, "kind": e.provider.kind, "calls": e.calls}
                )
        return out

    def count(self) -> int:
        return sum(len(v) for v in self._caps.values())

    # -- calls ------------------------------------------------------------------------------
    async def call(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        idempotency_key: str | None = None,
        caller: Caller | None = None,
    ) -> Result:
        """`caller` (None: the daemon itself) must be allowed to call it: the capability's
        `allowed_callers`, then the ACL (`sensitive` ones need a rule that says so)."""
        self.stats.calls += 1
        result = await self._call(name, dict(params or {}), timeout, idempotency_key, caller)
        self.stats.by_code[result.code] = self.stats.by_code.get(result.code, 0) + 1
        return result

    async def _call(
        self,
        name: str,
        params: dict[str, Any],
        timeout: float,
        key: str | None,
        caller: Caller | None,
    ) -> Result:
        entry = self.admit(name, caller)
        if isinstance(entry, Result):
            if entry.code == Code.FORBIDDEN:
                self.stats.forbidden += 1
            return entry
        bad = check_params(entry.spec.schema, params)
        if bad is not None:
            return Result(Code.INVALID_PARAMS, error=f"{entry.spec.full}: {bad[0]}: {bad[1]}")
        if timeout <= 0:
            return Result(Code.TIMEOUT, error="no time left (deadline already passed)")
        if key is None:
            return await self._run(entry, params, timeout)
        return await self._idempotent(entry, params, timeout, key)

    def admit(self, name: str, caller: Caller | None) -> Entry | Result:
        """The capability `name` resolves to, if `caller` may call it; else why not. What a
        call checks before its params, and what a one-hop grant is given on."""
        try:
            entry = self.resolve(name)
        except ValueError as exc:
            return Result(Code.INVALID_PARAMS, error=str(exc))
        if entry is None:
            return Result(Code.PROVIDER_UNAVAILABLE, error=f"no capability {name!r}")
        spec = entry.spec
        if caller is not None and not caller.may_call(
            spec.name, sensitive=spec.sensitive, allowed_callers=spec.allowed_callers
        ):
            why = " (sensitive)" if spec.sensitive else ""
            return Result(Code.FORBIDDEN, error=f"{caller.label} may not call {spec.full}{why}")
        return entry

    def account(self, full: str, code: str, n: int, provider: Provider) -> None:
        """Count `n` calls of capability `full` that ended `code`, served by `provider`
        without the broker in the path (one-hop calls, reported in its lease renewals)."""
        try:
            entry = self.resolve(full) if "@" in full else None
        except ValueError:
            return
        if entry is None or entry.provider is not provider:
            return  # not (or no longer) this provider's: not ours to count
        entry.calls += n
        if code in (Code.TIMEOUT, Code.PROVIDER_UNAVAILABLE, Code.ERROR):
            entry.failures += n
        self.stats.calls += n
        self.stats.by_code[code] = self.stats.by_code.get(code, 0) + n

    async def _idempotent(
        self, entry: Entry, params: dict[str, Any], timeout: float, key: str
    ) -> Result:
        ikey = f"{entry.spec.name}|{key}"
        if self._idem is not None:
            kept = self._idem.get(ikey)
            if isinstance(kept, dict) and kept.get("until", 0) > time.time():
                self.stats.idempotent_hits += 1
                return Result.from_payload(kept["result"])
        running = self._idem_inflight.get(ikey)
        if running is not None:  # the same key twice at once: one run, one result
            self.stats.idempotent_hits += 1
            return await asyncio.shield(running)
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._idem_inflight[ikey] = fut
        try:
            result = await self._run(entry, params, timeout)
            # Only an outcome of the provider is kept: a timeout or a vanished provider may
            # be retried and run again.
            if self._idem is not None and result.code in (Code.OK, Code.CAPABILITY_ERROR):
                record = {"until": time.time() + self.idem_ttl_s, "result": result.to_payload()}
                await self._idem.put(ikey, record)
            fut.set_result(result)
            return result
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._idem_inflight.pop(ikey, None)

    async def _run(self, entry: Entry, params: dict[str, Any], timeout: float) -> Result:
        prov = entry.provider
        entry.calls += 1
        self.inflight += 1
        try:
            async with asyncio.timeout(timeout):
                value = await prov.invoke(entry.spec, params, timeout)
            cbor2.dumps(value)  # the result crosses the bus: refuse what cannot
        except TimeoutError:
            entry.failures += 1
            return Result(
                Code.TIMEOUT, error=f"{entry.spec.full} gave no result within {timeout:g} s",
                provider=prov.id,
            )  # fmt: skip
        except CapabilityError as exc:
            return Result(Code.CAPABILITY_ERROR, error=str(exc), provider=prov.id)
        except ProviderUnavailable as exc:
            entry.failures += 1
            return Result(Code.PROVIDER_UNAVAILABLE, error=str(exc), provider=prov.id)
        except InvalidParams as exc:
            return Result(Code.INVALID_PARAMS, error=str(exc), provider=prov.id)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
            entry.failures += 1
            if isinstance(exc, cbor2.CBOREncodeError):
                msg = f"{entry.spec.full} returned a value CBOR cannot encode: {exc}"
                log.error("%s", msg)
                return Result(Code.ERROR, error=msg, provider=prov.id)
            return Result(Code.ERROR, error=_summary(exc), provider=prov.id)
        except Exception as exc:
            entry.failures += 1
            log.warning("capability %s raised: %s", entry.spec.full, _summary(exc))
            return Result(Code.ERROR, error=_summary(exc), provider=prov.id)
        finally:
            self.inflight -= 1
        return Result(Code.OK, value, provider=prov.id)

    def pending(self) -> int:
        return self.inflight + len(self._idem_inflight)

    async def sweep_idempotency(self) -> int:
        """Delete kept results past their TTL; returns how many."""
        if self._idem is None:
            return 0
        now = time.time()
        old = [
            k for k, v in self._idem.items() if not isinstance(v, dict) or v.get("until", 0) <= now
        ]
        for k in old:
            await self._idem.delete(k)
        return len(old)


def _summary(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


Invoke = Callable[[CapabilitySpec, dict[str, Any], float], Awaitable[Any]]
