"""Who is on the other end of a connection: an `Identity` the client never chooses.

The bus learns it from the kernel or the transport: the peer's uid/gid on the unix socket
(libzmq reads `SO_PEERCRED` at accept and hands it on with every message as the
`Peer-Address` property, `host:uid:gid:pid`), the name of the authorized CurveZMQ key on
TCP (the ZAP handler's `User-Id`), `plugin:<id>` for in-process agents, `mcp:<server>` for
MCP servers, `token:<name>` for HTTP, `voice:<source>` for spoken turns,
`daemon:<component>` for the daemon's own parts.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Identity", "IdentityKind"]


class IdentityKind(StrEnum):
    UNIX = "unix"  # a local process on the ipc socket: its uid and gid
    CURVE = "curve"  # a TCP client with an authorized CurveZMQ key: the key's name
    PLUGIN = "plugin"  # an in-process agent
    MCP = "mcp"  # an MCP server loomd runs
    VOICE = "voice"  # a spoken turn: `voice:local` (the board's mic), `voice:<site>`
    TOKEN = "token"  # an HTTP client with a bearer token
    DAEMON = "daemon"  # one of the daemon's own components
    ANONYMOUS = "anonymous"  # TCP without authentication (`bus.tcp_auth = "none"`)


@dataclass(frozen=True)
class Identity:
    kind: IdentityKind
    name: str  # user name (or uid), key name, plugin id, server, token name, component
    uid: int = -1
    gid: int = -1
    groups: tuple[str, ...] = field(default=(), compare=False)  # group names (unix peers)

    @classmethod
    def unix(cls, uid: int, gid: int) -> Identity:
        user = _user_name(uid)
        return cls(IdentityKind.UNIX, user or str(uid), uid, gid, _groups(user, uid, gid))

    @classmethod
    def daemon(cls, component: str) -> Identity:
        return cls(IdentityKind.DAEMON, component)

    @classmethod
    def plugin(cls, agent_id: str) -> Identity:
        return cls(IdentityKind.PLUGIN, agent_id)

    @property
    def superuser(self) -> bool:
        """Root, the daemon's own user (it can read the LMDB and the keys anyway) and the
        daemon's components: no rule applies to them."""
        if self.kind is IdentityKind.DAEMON:
            return True
        return self.kind is IdentityKind.UNIX and self.uid in (0, os.geteuid())

    @property
    def label(self) -> str:
        """How status and error events show it: `unix:alice(1000)`, `curve:laptop`."""
        if self.kind is IdentityKind.UNIX:
            return (
                f"unix:{self.name}({self.uid})" if self.name != str(self.uid) else f"uid:{self.uid}"
            )
        return f"{self.kind}:{self.name}"

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """Every name a rule's `identity` pattern may use for it."""
        if self.kind is IdentityKind.UNIX:
            out = [f"uid:{self.uid}", f"gid:{self.gid}", f"user:{self.name}"]
            out += [f"group:{g}" for g in self.groups]
            return tuple(out)
        return (f"{self.kind}:{self.name}",)

    def __str__(self) -> str:
        return self.label


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=256)
def _groups(user: str, uid: int, gid: int) -> tuple[str, ...]:
    """The primary group from the kernel, the supplementary ones from the group database
    (as sshd and polkit do: the peer credentials carry only the primary gid)."""
    gids = {gid}
    if user:
        try:
            gids.update(os.getgrouplist(user, gid))
        except OSError:
            pass
    out = []
    for g in sorted(gids):
        try:
            out.append(grp.getgrgid(g).gr_name)
        except KeyError:
            out.append(str(g))
    return tuple(out)
