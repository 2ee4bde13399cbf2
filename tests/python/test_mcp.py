"""The MCP gateway with the official MCP Python SDK on both sides: FastMCP servers behind
aigw, and the SDK's Streamable HTTP client as the caller."""

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from conftest import BIN, ROOT, free_port, wait_port

SERVERS = Path(__file__).with_name("mcp_servers.py")
MATH_TOKEN = "Bearer math-server-credential"

CONFIG = """
version: 1
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  admin_keys: [{{key: adm-mcp}}]
mcp_servers:
  - {{name: math, url: "http://127.0.0.1:{math}/mcp", headers: {{authorization: "{math_token}"}}}}
  - {{name: notes, url: "http://127.0.0.1:{notes}/mcp", tools: [echo, fail], timeout_ms: 5000}}
  - {{name: down, url: "http://127.0.0.1:{down}/mcp", timeout_ms: 2000}}
  - {{name: slow, url: "http://127.0.0.1:{slow}/mcp", timeout_ms: 1000}}
guardrails:
  - {{name: mcp-secrets, pack: "{root}/filters/secrets.yaml", stage: request, action: block}}
  - {{name: mcp-pii, pack: "{root}/filters/pii.yaml", stage: response, action: mask}}
rate_limits:
  - {{name: two-a-minute, requests_per_minute: 2}}
api_keys:
  - {{name: all, key: sk-mcp-all, owner: agents, mcp: {{servers: ["*"]}}}}
  - {{name: adder, key: sk-mcp-adder, owner: adders, mcp: {{servers: [math], tools: ["math__add*"]}}}}
  - {{name: none, key: sk-mcp-none}}
  - {{name: guarded, key: sk-mcp-guarded, guardrails: [mcp-secrets, mcp-pii], mcp: {{servers: [notes]}}}}
  - {{name: limited, key: sk-mcp-limited, rate_limit: two-a-minute, mcp: {{servers: [math]}}}}
"""


def start_server(which, port):
    p = subprocess.Popen([sys.executable, str(SERVERS), which, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, f"MCP server {which}")
    return p


@pytest.fixture(scope="module")
def mcp_gateway():
    math, notes, slow, down, port, admin = (free_port() for _ in range(6))
    procs = {"math": start_server("math", math), "notes": start_server("notes", notes), "slow": start_server("slow", slow)}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "aigw.yaml"
        cfg.write_text(
            CONFIG.format(port=port, admin=admin, math=math, notes=notes, slow=slow, down=down, root=ROOT, math_token=MATH_TOKEN)
        )
        access = open(Path(tmp) / "access.log", "w")
        gw = subprocess.Popen([BIN, "serve", "--config", str(cfg)], stdout=access, stderr=subprocess.DEVNULL)
        procs["gateway"] = gw
        wait_port(port, gw, "gateway")
        state = {"url": f"http://127.0.0.1:{port}", "admin": f"http://127.0.0.1:{admin}", "math_port": math,
                 "procs": procs, "access": Path(tmp) / "access.log"}
        try:
            yield state
        finally:
            for p in state["procs"].values():
                p.kill()
                p.wait()
            access.close()


@asynccontextmanager
async def connect(url, key):
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def run(coro):
    return asyncio.run(coro)


def text_of(result):
    return result.content[0].text


def test_tools_are_aggregated_and_called_with_the_servers_credentials(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-all") as s:
            names = sorted(t.name for t in (await s.list_tools()).tools)
            assert names == [
                "math__add", "math__add_many", "math__multiply", "math__session_id", "math__whoami",
                "notes__echo", "notes__fail", "slow__sleep",
            ]
            assert text_of(await s.call_tool("math__add", {"a": 2, "b": 3})) == "5"
            # The server's credential from the config, never the caller's key.
            assert text_of(await s.call_tool("math__whoami", {})) == MATH_TOKEN
            failed = await s.call_tool("notes__fail", {})
            assert failed.isError and "always fails" in text_of(failed)
            prompts = [p.name for p in (await s.list_prompts()).prompts]
            assert prompts == ["math__explain"]
            got = await s.get_prompt("math__explain", {"topic": "gateways"})
            assert got.messages[0].content.text == "Explain gateways simply."
            resources = (await s.list_resources()).resources
            assert [str(r.uri) for r in resources] == ["notes://readme"]
            read = await s.read_resource("notes://readme")
            assert read.contents[0].text == "Read me first."
            await s.send_ping()

    run(go())


def test_a_caller_sees_and_calls_only_its_tools(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-adder") as s:
            assert sorted(t.name for t in (await s.list_tools()).tools) == ["math__add", "math__add_many"]
            assert text_of(await s.call_tool("math__add_many", {"numbers": [1, 2, 3]})) == "6"
            errors = []
            for forbidden in ["math__multiply", "math__nope", "notes__echo", "multiply"]:
                with pytest.raises(McpError) as e:
                    await s.call_tool(forbidden, {"a": 1, "b": 2, "text": "x"})
                errors.append(e.value.error.message.replace(forbidden, "NAME"))
            # A forbidden tool reads exactly like one that does not exist.
            assert len(set(errors)) == 1, errors
            # The tool globs name prompts too: math__explain is not math__add*.
            assert (await s.list_prompts()).prompts == []
            with pytest.raises(McpError):
                await s.get_prompt("math__explain", {"topic": "globs"})
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-none") as s:
            assert (await s.list_tools()).tools == []
        # One server, names as the server gives them.
        async with connect(mcp_gateway["url"] + "/mcp/math", "sk-mcp-adder") as s:
            assert sorted(t.name for t in (await s.list_tools()).tools) == ["add", "add_many"]
            assert text_of(await s.call_tool("add", {"a": 40, "b": 2})) == "42"

    run(go())
    # A server this caller may not use is not there at all.
    assert post_raw(mcp_gateway["url"] + "/mcp/notes", "sk-mcp-adder", {})[0] == 404


def test_guardrails_rate_limits_and_a_down_server(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-guarded") as s:
            ok = await s.call_tool("notes__echo", {"text": "hello"})
            assert text_of(ok) == "hello"
            with pytest.raises(McpError) as e:
                await s.call_tool("notes__echo", {"text": "my key is AKIAIOSFODNN7EXAMPLE"})
            assert "mcp-secrets" in e.value.error.message
            # The response stage masks what the tool answered.
            masked = await s.call_tool("notes__echo", {"text": "write to alice@example.com"})
            assert text_of(masked) == "write to [REDACTED:email]"
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-limited") as s:
            # Every request that reaches a server counts, a list too: after its first call
            # the SDK lists the tools (to check results against their schemas), so two
            # requests a minute are one call and that list.
            assert text_of(await s.call_tool("math__add", {"a": 1, "b": 1})) == "2"
            with pytest.raises(McpError) as e:
                await s.call_tool("math__add", {"a": 1, "b": 1})
            assert "limit" in e.value.error.message.lower()
            with pytest.raises(McpError) as e:
                await s.get_prompt("math__explain", {"topic": "limits"})
            assert "limit" in e.value.error.message.lower()
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-all") as s:
            started = time.time()
            with pytest.raises(McpError) as e:
                await s.call_tool("down__anything", {})
            assert "'down' is unavailable" in e.value.error.message
            assert time.time() - started < 5
            # A server that does not answer in its timeout_ms: an error, not a hung call.
            started = time.time()
            with pytest.raises(McpError) as e:
                await s.call_tool("slow__sleep", {"seconds": 10})
            assert "'slow' is unavailable" in e.value.error.message
            assert time.time() - started < 4

    run(go())


def test_closing_the_callers_session_closes_the_servers(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-all") as s:
            upstream = text_of(await s.call_tool("math__session_id", {}))
            assert upstream
        return upstream

    upstream = run(go())  # leaving the client sends DELETE /mcp
    # The math server no longer knows the session aigw had with it.
    req = urllib.request.Request(
        f"http://127.0.0.1:{mcp_gateway['math_port']}/mcp", method="POST",
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                 "Mcp-Session-Id": upstream, "MCP-Protocol-Version": "2025-06-18"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 404


def test_an_upstream_session_that_expires_is_made_again(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-all") as s:
            assert text_of(await s.call_tool("math__add", {"a": 1, "b": 2})) == "3"
            # The math server restarts: its sessions are gone, and it answers 404.
            old = mcp_gateway["procs"]["math"]
            old.kill()
            old.wait()
            mcp_gateway["procs"]["math"] = start_server("math", mcp_gateway["math_port"])
            assert text_of(await s.call_tool("math__add", {"a": 2, "b": 2})) == "4"

    run(go())


def test_tool_calls_are_metrics_and_access_lines_without_their_content(mcp_gateway):
    async def go():
        async with connect(mcp_gateway["url"] + "/mcp", "sk-mcp-all") as s:
            # Only tools a server listed become metric labels.
            await s.list_tools()
            await s.call_tool("math__multiply", {"a": 6, "b": 7})
            # Letters no id or number in a log line can hold: found only if content leaked.
            assert text_of(await s.call_tool("notes__echo", {"text": "zebra-quokka-canary"})) == "zebra-quokka-canary"

    run(go())
    with urllib.request.urlopen(mcp_gateway["admin"] + "/metrics") as r:
        metrics = r.read().decode()
    assert 'aigw_mcp_tool_calls_total{outcome="ok",server="math",tool="multiply"}' in metrics, metrics
    assert 'aigw_mcp_tool_calls_total{outcome="unknown_tool",server="",tool=""}' in metrics
    req = urllib.request.Request(mcp_gateway["admin"] + "/admin/v1/status", headers={"Authorization": "Bearer adm-mcp"})
    with urllib.request.urlopen(req) as r:
        status = json.loads(r.read())
    assert [m["name"] for m in status["mcp_servers"]] == ["math", "notes", "down", "slow"]
    assert MATH_TOKEN not in json.dumps(status)
    assert any(c["tool"] == "multiply" and c["outcome"] == "ok" for c in status["mcp_tool_calls"])
    time.sleep(0.3)
    lines = [json.loads(l) for l in mcp_gateway["access"].read_text().splitlines()]
    calls = [l for l in lines if l.get("mcp_tool") == "multiply"]
    assert calls and calls[0]["mcp_server"] == "math" and calls[0]["mcp_outcome"] == "ok"
    assert calls[0]["owner"] == "agents"
    echoed = [l for l in lines if l.get("mcp_tool") == "echo"]
    assert echoed and "zebra" not in mcp_gateway["access"].read_text()


def post_raw(url, key, body, session=None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            raw = r.read()
            return r.status, r.headers.get("mcp-session-id"), json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, None, json.loads(raw) if raw else None


def test_sessions_belong_to_their_caller_and_bad_messages_get_jsonrpc_errors(mcp_gateway):
    url = mcp_gateway["url"] + "/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    status, session, answer = post_raw(url, "sk-mcp-all", init)
    assert status == 200 and session and answer["result"]["protocolVersion"] == "2025-06-18"
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert post_raw(url, "sk-mcp-all", listing, session)[0] == 200
    # Another caller presenting the id finds nothing.
    status, _, answer = post_raw(url, "sk-mcp-adder", listing, session)
    assert status == 404 and answer["error"]["code"] == -32600
    # No session, a batch, garbage, an unknown method, a stream request.
    status, _, answer = post_raw(url, "sk-mcp-all", listing)
    assert status == 400 and "Mcp-Session-Id" in answer["error"]["message"]
    status, _, answer = post_raw(url, "sk-mcp-all", [listing, listing], session)
    assert status == 400 and answer["error"]["code"] == -32600
    status, _, answer = post_raw(url, "sk-mcp-all", {"jsonrpc": "2.0", "id": 3, "method": "tools/destroy"}, session)
    assert status == 200 and answer["error"]["code"] == -32601
    assert post_raw(url, "sk-mcp-all", {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)[0] == 202
    req = urllib.request.Request(url, headers={"Authorization": "Bearer sk-mcp-all", "Mcp-Session-Id": session})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 405
    # An unknown protocol revision gets aigw's own; no key at all is a 401.
    status, _, answer = post_raw(url, "sk-mcp-all", dict(init, params={"protocolVersion": "1999-01-01"}))
    assert answer["result"]["protocolVersion"] == "2025-06-18"
    assert post_raw(url, "sk-wrong", init)[0] == 401


def test_one_caller_cannot_push_out_the_sessions_of_others(mcp_gateway):
    url = mcp_gateway["url"] + "/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    opened = []
    for _ in range(256):
        status, session, _ = post_raw(url, "sk-mcp-none", init)
        assert status == 200 and session
        opened.append(session)
    status, session, answer = post_raw(url, "sk-mcp-none", init)
    assert session is None and "Too many open sessions" in answer["error"]["message"]
    # Others are not affected, and ending one session frees its place.
    assert post_raw(url, "sk-mcp-adder", init)[1]
    req = urllib.request.Request(url, method="DELETE",
                                 headers={"Authorization": "Bearer sk-mcp-none", "Mcp-Session-Id": opened[0]})
    with urllib.request.urlopen(req) as r:
        assert r.status == 204
    assert post_raw(url, "sk-mcp-none", init)[1]
