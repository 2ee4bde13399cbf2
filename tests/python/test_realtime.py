"""Realtime through the official `openai` SDK's own client (`client.realtime.connect`,
over `websockets`), unchanged but for the base URL and the caller key; and the session
over the concurrency limit over raw HTTP."""

import asyncio
import base64
import os
import socket

from openai import AsyncOpenAI

# A key of its own: the realtime models stay out of the other tests' model lists.
REALTIME_KEY = "sk-py-realtime"


def client(gateway: str, key: str = REALTIME_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)


async def converse(gateway: str, model: str, text: str) -> list:
    """Sends one text item, asks for a response, returns the events up to its end."""
    async with client(gateway).realtime.connect(model=model) as conn:
        first = await conn.recv()
        assert first.type == "session.created"
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        )
        await conn.response.create()
        events = []
        async for event in conn:
            events.append(event)
            if event.type in ("response.done", "error"):
                break
        return events


def test_a_text_session_through_the_sdk(gateway):
    events = asyncio.run(converse(gateway, "realtime", "hello from python"))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "hello from python"
    done = events[-1]
    assert done.type == "response.done"
    assert done.response.usage.input_tokens == 3
    assert done.response.usage.output_tokens == 3


def test_a_guardrail_block_in_the_output_is_an_error_event(gateway):
    events = asyncio.run(converse(gateway, "realtime-says", "anything"))
    assert "falcon" not in "".join(getattr(e, "delta", "") for e in events)
    assert events[-1].type == "error"
    assert events[-1].error.code == "content_filter"


def upgrade_status(gateway: str, key: str) -> int:
    """The status line of a raw WebSocket upgrade to the realtime endpoint."""
    host, port = gateway.removeprefix("http://").split(":")
    nonce = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            (
                "GET /v1/realtime?model=realtime HTTP/1.1\r\n"
                f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {key}\r\n\r\n"
            ).encode()
        )
        return int(s.recv(4096).split(b" ", 2)[1])


def test_a_session_over_the_concurrency_limit_is_refused_before_the_upgrade(gateway):
    async def run():
        async with client(gateway, "sk-py-realtime-one").realtime.connect(model="realtime") as conn:
            assert (await conn.recv()).type == "session.created"
            # The open session holds the key's one slot.
            return upgrade_status(gateway, "sk-py-realtime-one")

    assert asyncio.run(run()) == 429
    assert upgrade_status(gateway, "sk-wrong") == 401
