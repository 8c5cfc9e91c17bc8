"""The HTTP surfaces beyond loopback: bearer tokens and the Origin rule, with real sockets
and the clients users have (plain HTTP for the page and metrics, `openai`, the `mcp`
package's Streamable HTTP client), against a real daemon bound to this machine's
non-loopback address (127.0.0.0/8 counts as loopback: see docs/design/http-auth.md)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from loomd.web.auth import origin_allowed
from tests.conftest import LoomdProcess, free_port, loomctl, plugins_section
from tests.web.conftest import get


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (the one a default route uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


HOST = _outside_address()
needs_outside = pytest.mark.skipif(HOST is None, reason="no non-loopback IPv4 address here")

LIGHTS = '''
from loomd.agents import capability

@capability("lights.set")
def set_level(level: int) -> dict:
    """Set the light level."""
    return {"level": level}
'''


class Ports:
    def __init__(self) -> None:
        self.metrics, self.openai, self.mcp = free_port(), free_port(), free_port()


def _daemon(root: Path, ports: Ports, host: str) -> LoomdProcess:
    toml = (
        plugins_section(root, lights=LIGHTS)
        + f'[metrics]\nbind = "{host}"\nport = {ports.metrics}\npage = "on"\n'
        f'origins = ["https://grafana.example"]\n'
        f'[llm]\nenabled = true\nhttp_bind = "{host}"\nhttp_port = {ports.openai}\n'
        f"[voice]\nenabled = false\n"
        f'[mcp]\nexpose = ["lights.*"]\nhttp_enabled = true\nhttp_bind = "{host}"\n'
        f"http_port = {ports.mcp}\n"
    )
    return LoomdProcess(root, toml)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(host, port):
        assert time.monotonic() < deadline, f"nothing listens on {host}:{port}"
        time.sleep(0.05)


def _create(d: LoomdProcess, name: str, scope: str) -> str:
    r = loomctl(d, "tokens", "create", name, "--scope", scope)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert secret.startswith("loomd_") and len(secret) > 40
    return secret


def _status(d: LoomdProcess) -> dict[str, Any]:
    r = loomctl(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _find(block: Any, text: str) -> bool:
    return text in json.dumps(block)


def _post_mcp(host: str, port: int, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})  # fmt: skip
    hdrs = {"Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", **headers}  # fmt: skip
    status, _, _ = get(port, "/mcp", host=host, method="POST", headers=hdrs, body=body)
    return status


async def _mcp_tools(url: str, token: str) -> set[str]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with (
        client,
        streamable_http_client(url, http_client=client) as streams,
        ClientSession(streams[0], streams[1]) as s,
    ):
        await s.initialize()
        names = {t.name for t in (await s.list_tools()).tools}
        r = await s.call_tool("lights_set", {"level": 7})
        assert not r.is_error and json.loads(r.content[0].text) == {"level": 7}
        return names


@needs_outside
def test_every_surface_beyond_loopback_wants_a_token(short_tmp: Path) -> None:
    pytest.importorskip("mcp")
    pytest.importorskip("openai")
    import openai

    assert HOST is not None
    ports = Ports()
    d = _daemon(short_tmp, ports, HOST)
    d.start()
    try:
        # No token yet: none of the three listens, and status says why, naming the option.
        st = _status(d)
        for option in ("metrics.bind", "llm.http_bind", "mcp.http_bind"):
            assert _find(st, option), (option, st)
        assert not _listening(HOST, ports.metrics)
        assert not _listening(HOST, ports.openai)
        assert not _listening(HOST, ports.mcp)
        log = d.log.read_text()
        assert "beyond loopback, so bearer tokens are required" in log

        status_tok = _create(d, "prometheus", "status")
        openai_tok = _create(d, "ha-agent", "openai")
        mcp_tok = _create(d, "claude", "mcp")
        # created while running: each surface starts listening without a restart
        for port in (ports.metrics, ports.openai, ports.mcp):
            _wait_listening(HOST, port)

        # -- status page and metrics: plain HTTP
        auth = {"Authorization": f"Bearer {status_tok}"}
        for path in ("/metrics", "/", "/api/status"):
            code, headers, _ = get(ports.metrics, path, host=HOST)
            assert code == 401 and headers["www-authenticate"].startswith("Bearer"), path
            code, _, _ = get(ports.metrics, path, host=HOST,
                             headers={"Authorization": "Bearer loomd_wrong"})  # fmt: skip
            assert code == 401, path
            code, _, body = get(ports.metrics, path, host=HOST, headers=auth)
            assert code == 200, (path, body[:200])
        code, _, _ = get(ports.metrics, "/metrics", host=HOST,
                         headers={"Authorization": f"Bearer {openai_tok}"})  # fmt: skip
        assert code == 401  # another scope's token
        code, _, _ = get(ports.metrics, "/metrics", host=HOST,
                         headers={**auth, "Origin": "http://evil.example"})  # fmt: skip
        assert code == 403
        for origin in ("https://grafana.example", f"http://localhost:{ports.metrics}"):
            code, _, _ = get(ports.metrics, "/metrics", host=HOST,
                             headers={**auth, "Origin": origin})  # fmt: skip
            assert code == 200, origin

        # -- the OpenAI-compatible endpoint: the `openai` client, api_key = token
        base = f"http://{HOST}:{ports.openai}/v1"
        for key in ("loomd_wrong", status_tok):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
        models = openai.OpenAI(base_url=base, api_key=openai_tok, max_retries=0).models.list()
        assert [m.id for m in models.data]
        code, _, _ = get(ports.openai, "/v1/models", host=HOST,
                         headers={"Authorization": f"Bearer {openai_tok}",
                                  "Origin": "http://evil.example"})  # fmt: skip
        assert code == 403

        # -- MCP Streamable HTTP: the `mcp` client with headers, and raw requests
        url = f"http://{HOST}:{ports.mcp}/mcp"
        assert _post_mcp(HOST, ports.mcp, {}) == 401
        assert _post_mcp(HOST, ports.mcp, {"Authorization": "Bearer loomd_wrong"}) == 401
        assert _post_mcp(HOST, ports.mcp, {"Authorization": f"Bearer {openai_tok}"}) == 401
        bad_origin = {"Authorization": f"Bearer {mcp_tok}", "Origin": "http://evil.example"}
        assert _post_mcp(HOST, ports.mcp, bad_origin) == 403
        # the SDK client surfaces the 401 as an error response (MCPError in a group)
        with pytest.raises(ExceptionGroup, match="unhandled errors"):
            uvloop.run(_mcp_tools(url, "loomd_wrong"))
        assert "lights_set" in uvloop.run(_mcp_tools(url, mcp_tok))

        # -- list: names, scopes, last use; never a secret nor its digest
        r = loomctl(d, "tokens", "list", "--json")
        assert r.returncode == 0, r.stderr
        listed = {t["name"]: t for t in json.loads(r.stdout)}
        assert set(listed) == {"prometheus", "ha-agent", "claude"}
        assert listed["claude"]["scopes"] == ["mcp"]
        assert all(t["last_used"] is not None for t in listed.values())
        for secret in (status_tok, openai_tok, mcp_tok):
            assert secret not in r.stdout and secret[6:20] not in r.stdout

        # -- revoke: refused on the very next request, everywhere it was accepted
        assert loomctl(d, "tokens", "revoke", "claude").returncode == 0
        assert _post_mcp(HOST, ports.mcp, {"Authorization": f"Bearer {mcp_tok}"}) == 401
        assert loomctl(d, "tokens", "revoke", "prometheus").returncode == 0
        code, _, _ = get(ports.metrics, "/metrics", host=HOST, headers=auth)
        assert code == 401
        gone = loomctl(d, "tokens", "revoke", "prometheus")
        assert gone.returncode != 0 and "no token named" in gone.stderr
        dup = loomctl(d, "tokens", "create", "ha-agent", "--scope", "openai")
        assert dup.returncode != 0 and "exists" in dup.stderr
        bad = loomctl(d, "tokens", "create", "x", "--scope", "root")
        assert bad.returncode != 0 and "bad token scope root" in bad.stderr
    finally:
        d.close()


@needs_outside
def test_an_all_token_survives_a_restart(short_tmp: Path) -> None:
    """Tokens live in the state store: after a restart the surface listens at once."""
    assert HOST is not None
    ports = Ports()
    root = short_tmp
    d = LoomdProcess(root, f'[metrics]\nbind = "{HOST}"\nport = {ports.metrics}\npage = "off"\n'
                           '[voice]\nenabled = false\n[llm]\nenabled = false\n')  # fmt: skip
    d.start()
    try:
        tok = _create(d, "all-of-it", "all")
        _wait_listening(HOST, ports.metrics)
        d.restart()
        assert _listening(HOST, ports.metrics)  # READY came after the surface bound
        code, _, body = get(ports.metrics, "/metrics", host=HOST,
                            headers={"Authorization": f"Bearer {tok}"})  # fmt: skip
        assert code == 200 and b"loomd_" in body
    finally:
        d.close()


def test_loopback_mcp_refuses_a_foreign_origin(short_tmp: Path) -> None:
    """On loopback no token is asked, but a browser page from elsewhere gets 403."""
    pytest.importorskip("mcp")
    port = free_port()
    d = LoomdProcess(short_tmp, f"[mcp]\nhttp_enabled = true\nhttp_port = {port}\n"
                                "[voice]\nenabled = false\n[llm]\nenabled = false\n")  # fmt: skip
    d.start()
    try:
        assert _post_mcp("127.0.0.1", port, {"Origin": "http://evil.example"}) == 403
        assert _post_mcp("127.0.0.1", port, {"Origin": "null"}) == 403
        assert _post_mcp("127.0.0.1", port, {"Origin": f"http://localhost:{port}"}) == 200
        assert _post_mcp("127.0.0.1", port, {}) == 200
    finally:
        d.close()


def test_origin_rule() -> None:
    assert origin_allowed("http://127.0.0.1:8080", ())
    assert origin_allowed("http://127.8.0.1", ())
    assert origin_allowed("http://[::1]:9", ())
    assert origin_allowed("http://localhost:3000/", ())
    assert origin_allowed("https://Grafana.example:3000", ("https://grafana.example:3000",))
    assert not origin_allowed("https://grafana.example:3001", ("https://grafana.example:3000",))
    assert not origin_allowed("http://localhost.evil.example", ())
    assert not origin_allowed("http://192.0.2.2:9478", ())
    assert not origin_allowed("null", ())
    assert not origin_allowed("file://", ())
