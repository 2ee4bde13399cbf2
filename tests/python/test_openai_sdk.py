"""Wire compatibility with the official `openai` Python SDK."""

import json
import time
import uuid

import openai
import pytest
from openai import OpenAI

from conftest import CALLER_KEY, jwt_token


@pytest.fixture()
def client(gateway):
    return OpenAI(base_url=f"{gateway}/v1", api_key=CALLER_KEY, max_retries=0)


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], temperature=0.2
    )
    assert r.object == "chat.completion"
    assert r.model == "mock-gpt"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Hello from the aigw mock upstream model today."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8


def test_chat_completion_raw_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "py-1"}
    )
    assert raw.headers["x-request-id"] == "py-1"
    assert raw.headers["x-aigw-model"] == "gpt-4o-mini"


def test_streaming_without_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the aigw mock upstream model today."
    # The gateway asked upstream for usage on the caller's behalf and removed it again.
    assert all(c.choices for c in chunks)


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8


def test_embeddings(client):
    r = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 8


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "claude-mock",
        "gemini-mock",
        "vertex-gemini",
        "vertex-claude",
        "bedrock-nova",
        "bedrock-claude",
        "reasoner",
        "long-context",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "rate-limited",
        "instruct",
        "moderation",
        "image-model",
        "whisper",
        "tts",
    ]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("forbidden-model")


def test_error_classes(gateway, client):
    bad = OpenAI(base_url=f"{gateway}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="forbidden-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_allowed"

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"

    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="rate-limited", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["retry-after"] == "1"

    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"messages": []}, cast_to=object)
    assert e.value.code == "invalid_request"


def test_gateway_rate_limit(gateway):
    limited = OpenAI(base_url=f"{gateway}/v1", api_key="sk-py-openai-limited", max_retries=0)
    raw = limited.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as e:
        limited.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.type == "requests"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


# The same SDK against an Anthropic provider: aigw translates both ways.


def test_chat_against_anthropic_provider(client):
    r = client.chat.completions.create(
        model="claude-mock",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
    )
    assert r.object == "chat.completion"
    assert r.model == "mock-claude"
    assert r.choices[0].message.content == "Hello from the aigw mock upstream model today."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_stream_against_anthropic_provider(client):
    chunks = list(
        client.chat.completions.create(
            model="claude-mock",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the aigw mock upstream model today."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 8


@pytest.mark.parametrize("model", ["gemini-mock", "vertex-gemini"])
def test_chat_and_stream_against_gemini_provider(client, model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=50)
    assert r.object == "chat.completion"
    assert r.model == "gemini-2.5-flash"
    assert r.choices[0].message.content == "Hello from the aigw mock upstream model today."
    assert r.choices[0].finish_reason == "stop"
    # 8 words and 2 thinking tokens.
    assert r.usage.completion_tokens == 10
    chunks = list(
        client.chat.completions.create(
            model=model, messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the aigw mock upstream model today."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_chat_and_stream_against_bedrock_provider(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    r = client.chat.completions.create(model="bedrock-nova", messages=msgs, max_tokens=50)
    assert r.object == "chat.completion"
    assert r.model == "amazon.nova-lite-v1:0"
    assert r.choices[0].message.content == "Hello from the aigw mock upstream model today."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model="bedrock-nova", messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the aigw mock upstream model today."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    "model", ["claude-mock", "gpt-4o-mini", "gemini-mock", "vertex-gemini", "vertex-claude", "bedrock-nova"]
)
def test_tool_round_trip(client, model):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"query": "Weather in Paris?"}
    messages += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert r.choices[0].message.content == "The tool said: 18C"


@pytest.mark.parametrize(
    "model", ["claude-mock", "gpt-4o-mini", "gemini-mock", "vertex-gemini", "vertex-claude", "bedrock-nova"]
)
def test_streamed_tool_call(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER], stream=True
        )
    )
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    names = [
        c.choices[0].delta.tool_calls[0].function.name
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls and c.choices[0].delta.tool_calls[0].function.name
    ]
    assert names == ["get_weather"]
    assert json.loads(args) == {"query": "Weather in Oslo?"}


@pytest.fixture()
def guarded(gateway):
    return OpenAI(base_url=f"{gateway}/v1", api_key="sk-py-guarded", max_retries=0)


@pytest.mark.parametrize("model", ["guarded-echo", "guarded-claude"])
def test_guardrail_masks_json_and_streams(guarded, model):
    msgs = [{"role": "user", "content": "mail jane.doe@example.com now"}]
    r = guarded.chat.completions.create(model=model, messages=msgs)
    assert r.choices[0].message.content == "mail [REDACTED:email] now"
    stream = guarded.chat.completions.create(model=model, messages=msgs, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "mail [REDACTED:email] now"


def test_guardrail_blocks_a_request(guarded):
    with pytest.raises(openai.BadRequestError) as e:
        guarded.chat.completions.create(
            model="guarded-echo", messages=[{"role": "user", "content": "key sk-proj-EXAMPLE_not_a_real_key_0000"}]
        )
    assert e.value.code == "content_filter"
    assert "py-secrets" in e.value.message and "sk-proj" not in e.value.message


@pytest.mark.parametrize("model", ["guarded-echo", "guarded-claude"])
def test_guardrail_blocks_a_stream_and_a_completion(guarded, model):
    msgs = [{"role": "user", "content": "the falcon has landed"}]
    seen = []
    # A match in the first events is blocked before anything reached the caller: the SDK
    # raises at create (a 400); later, it raises while iterating (an error event).
    with pytest.raises(openai.APIError) as e:
        stream = guarded.chat.completions.create(model=model, messages=msgs, stream=True)
        for chunk in stream:
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")
    assert "py-codenames" in e.value.message
    assert "falcon" not in "".join(seen)
    r = guarded.chat.completions.create(model=model, messages=msgs)
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content is None


@pytest.mark.parametrize("model", ["cached-echo", "cached-claude"])
def test_cache_hits_replay_as_json_and_streams(gateway, model):
    client = OpenAI(base_url=f"{gateway}/v1", api_key="sk-py-free", max_retries=0)
    msgs = [{"role": "user", "content": f"cache me {uuid.uuid4()}"}]
    first = client.chat.completions.with_raw_response.create(model=model, messages=msgs)
    assert first.headers["x-aigw-cache"] == "miss"
    for _ in range(100):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=msgs)
        if raw.headers["x-aigw-cache"] == "hit":
            break
        time.sleep(0.05)
    assert raw.headers["x-aigw-cache"] == "hit"
    assert raw.parse().choices[0].message.content == msgs[0]["content"]
    stream = client.chat.completions.create(
        model=model, messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msgs[0]["content"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_responses_api_json_and_stream(gateway):
    client = OpenAI(base_url=f"{gateway}/v1", api_key="sk-py-free", max_retries=0)
    r = client.responses.create(model="plain-echo", input="respond to me")
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == "respond to me"
    assert r.usage.output_tokens == 3
    deltas = []
    completed = None
    for event in client.responses.create(model="plain-echo", input="stream me please", stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert "".join(deltas) == "stream me please"
    assert completed is not None and completed.output_text == "stream me please"
    with client.responses.stream(model="plain-echo", input=[{"role": "user", "content": "helper"}]) as s:
        final = s.get_final_response()
    assert final.output_text == "helper"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="claude-mock", input="x")


@pytest.mark.parametrize("model", ["claude-mock", "vertex-claude", "bedrock-claude"])
def test_reasoning_effort_thinks_and_the_signed_blocks_go_back(client, model):
    """Claude's signed thinking reaches OpenAI-SDK callers and survives the SDK's own round
    trip (`model_dump` of the message): the mock refuses a tool turn without it."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], reasoning_effort="low")
    msg = r.choices[0].message
    assert "Weather in Paris?" in msg.model_extra["reasoning_content"]
    block = msg.model_extra["thinking_blocks"][0]
    assert block["type"] == "thinking" and block["signature"]
    call = msg.tool_calls[0]
    messages += [msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert r.choices[0].message.content == "The tool said: 18C"

    # Streamed: reasoning deltas, then the signed block.
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages[:1], tools=[WEATHER], reasoning_effort="low", stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas)
    blocks = [b for d in deltas for b in (d.model_extra or {}).get("thinking_blocks", [])]
    assert reasoning == block["thinking"]
    assert blocks == [block]


def test_cached_and_reasoning_token_details(client):
    r = client.chat.completions.create(model="reasoner", messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens_details.reasoning_tokens == 9
    assert r.choices[0].message.model_extra["reasoning_content"] == "Reasoned in 9 tokens."
    # A prefix of this test's own: the mock's prompt cache lives as long as the session.
    system = [{"type": "text", "text": f"Library rules {uuid.uuid4()}. " * 30, "cache_control": {"type": "ephemeral"}}]
    for expect_cached in (False, True):
        r = client.chat.completions.create(
            model="bedrock-claude",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
        )
        cached = r.usage.prompt_tokens_details.cached_tokens
        assert (cached > 200) == expect_cached, r.usage


def test_a_prompt_too_long_for_one_model_moves_to_the_next(client):
    """Claude's and Bedrock's "too long" errors are read from their bodies: the alias
    lists the class, so the request ends on the model that takes it."""
    raw = client.chat.completions.with_raw_response.create(
        model="long-context", messages=[{"role": "user", "content": "A long prompt"}]
    )
    assert raw.headers["x-aigw-model"] == "gpt-4o-mini"
    assert raw.parse().choices[0].message.content.startswith("Hello")


def test_a_jwt_is_a_caller_key(gateway):
    """An identity provider's token works wherever a key does, within the models it grants."""
    client = OpenAI(base_url=f"{gateway}/v1", api_key=jwt_token("py-team", ["gpt-4o-mini"]), max_retries=0)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from the aigw mock upstream model today."
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="reasoner", messages=[{"role": "user", "content": "hi"}])
    expired = OpenAI(
        base_url=f"{gateway}/v1", api_key=jwt_token("py-team", ["gpt-4o-mini"], exp=int(time.time()) - 600), max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as e:
        expired.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_api_key"

