"""A tiny stdio MCP server for the system test's `mcp` check (tests/system/checks.sh).

The packaged daemon spawns it with its own interpreter, /usr/lib/loomd/bin/python (the
`mcp` package comes from loomd-mcp), so it runs inside loomd.service's sandbox: the
`sandbox` tool reports what the kernel says about this process, so the check can see
that the server inherited the unit's seccomp filter and no-new-privileges.
"""

from __future__ import annotations

import mmap
import os

from mcp.server.mcpserver import MCPServer  # mcp 2.x's name for FastMCP

server = MCPServer("systest")


@server.tool()
def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b


@server.tool()
def sandbox() -> str:
    """uid, NoNewPrivs and Seccomp of this process (/proc/self/status), and whether
    the kernel refuses a page both writable and executable (MemoryDenyWriteExecute)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    nnp, seccomp = fields["NoNewPrivs"].strip(), fields["Seccomp"].strip()
    try:
        prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        mmap.mmap(-1, mmap.PAGESIZE, prot=prot).close()
        wx = "allowed"
    except OSError as exc:
        wx = f"denied ({exc.strerror})"
    return f"uid={os.getuid()} NoNewPrivs={nnp} Seccomp={seccomp} wx={wx}"


if __name__ == "__main__":
    server.run("stdio")
