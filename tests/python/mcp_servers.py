"""MCP servers built with the official SDK's FastMCP, for tests/python/test_mcp.py:
`python mcp_servers.py math|notes|slow PORT`, Streamable HTTP at /mcp."""

import sys

from mcp.server.fastmcp import Context, FastMCP

which, port = sys.argv[1], int(sys.argv[2])
# notes answers plain JSON, the others SSE streams: aigw must read both.
server = FastMCP(which, host="127.0.0.1", port=port, json_response=which == "notes")

if which == "math":

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    def add_many(numbers: list[int]) -> int:
        """Adds a list of integers."""
        return sum(numbers)

    @server.tool()
    def multiply(a: int, b: int) -> int:
        """Multiplies two integers."""
        return a * b

    @server.tool()
    def session_id(ctx: Context) -> str:
        """The Mcp-Session-Id this server gave the caller (aigw)."""
        return ctx.request_context.request.headers.get("mcp-session-id", "")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The Authorization header this server received."""
        return ctx.request_context.request.headers.get("authorization", "")

    @server.prompt()
    def explain(topic: str) -> str:
        """Asks for a simple explanation."""
        return f"Explain {topic} simply."

elif which == "slow":

    @server.tool()
    def sleep(seconds: float) -> str:
        """Answers after a while."""
        import time

        time.sleep(seconds)
        return "awake"

else:

    @server.tool()
    def echo(text: str) -> str:
        """Returns its text."""
        return text

    @server.tool()
    def fail() -> str:
        """Always fails."""
        raise ValueError("this tool always fails")

    @server.resource("notes://readme")
    def readme() -> str:
        """The readme note."""
        return "Read me first."

server.run(transport="streamable-http")
