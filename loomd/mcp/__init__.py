"""MCP: client (servers\x27 tools as capabilities) and server mode. See docs/design/agents.md."""
