"""Wire compatibility with the official `anthropic` Python SDK, against an Anthropic
provider (native passthrough) and an OpenAI-style provider (translated)."""

import time
import uuid

import anthropic
import pytest
from anthropic import Anthropic

from conftest import CALLER_KEY, jwt_token

# Vertex AI's Gemini and Claude models and a Bedrock model included: the same answers
# through Google's paths and through Converse (SigV4-signed, AWS's event stream).
MODELS = ["claude-mock", "gpt-4o-mini", "gemini-mock", "vertex-gemini", "vertex-claude", "bedrock-nova"]
# Output tokens of the mock's 8-word answer; Gemini bills its 2 thinking tokens as output.
OUTPUT_TOKENS = {"gemini-mock": 10, "vertex-gemini": 10}
TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture()
def client(gateway):
    return Anthropic(base_url=gateway, api_key=CALLER_KEY, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_messages_create(client, model):
    r = client.messages.create(
        model=model, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert r.type == "message"
    assert r.role == "assistant"
    assert r.content[0].type == "text"
    assert r.content[0].text == "Hello from the aigw mock upstream model today."
    assert r.stop_reason == "end_turn"
    assert r.usage.output_tokens == OUTPUT_TOKENS.get(model, 8)
    assert r.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream(client, model):
    with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the aigw mock upstream model today."
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == OUTPUT_TOKENS.get(model, 8)


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip(client, model):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.messages.create(model=model, max_tokens=100, tools=[TOOL], messages=messages)
    assert r.stop_reason == "tool_use"
    block = next(b for b in r.content if b.type == "tool_use")
    assert block.name == "get_weather"
    assert block.input == {"query": "Weather in Paris?"}
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in r.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18C"}]},
    ]
    r = client.messages.create(model=model, max_tokens=100, tools=[TOOL], messages=messages)
    assert r.content[0].text == "The tool said: 18C"


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_use(client, model):
    with client.messages.stream(
        model=model, max_tokens=100, tools=[TOOL], messages=[{"role": "user", "content": "Weather in Oslo?"}]
    ) as s:
        final = s.get_final_message()
    block = next(b for b in final.content if b.type == "tool_use")
    assert block.input == {"query": "Weather in Oslo?"}
    assert final.stop_reason == "tool_use"


def test_error_classes(gateway, client):
    bad = Anthropic(base_url=gateway, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-mock", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body == {"type": "error", "error": {"type": "authentication_error", "message": e.value.body["error"]["message"]}}

    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="forbidden-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])

    # A provider's 429 in OpenAI's envelope reaches an Anthropic caller in Anthropic's.
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="rate-limited", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "rate_limit_error"


def test_gateway_rate_limit(gateway):
    limited = Anthropic(base_url=gateway, api_key="sk-py-anthropic-limited", max_retries=0)
    msg = limited.messages.create(model="claude-mock", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text
    with pytest.raises(anthropic.RateLimitError) as e:
        limited.messages.create(model="claude-mock", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert "one-per-minute" in e.value.body["error"]["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1


@pytest.fixture()
def guarded(gateway):
    return Anthropic(base_url=gateway, api_key="sk-py-guarded", max_retries=0)


@pytest.mark.parametrize("model", ["guarded-claude", "guarded-echo"])
def test_guardrail_masks_json_and_streams(guarded, model):
    msgs = [{"role": "user", "content": "mail jane.doe@example.com now"}]
    r = guarded.messages.create(model=model, max_tokens=50, messages=msgs)
    assert r.content[0].text == "mail [REDACTED:email] now"
    with guarded.messages.stream(model=model, max_tokens=50, messages=msgs) as s:
        assert "".join(s.text_stream) == "mail [REDACTED:email] now"
        assert s.get_final_message().content[0].text == "mail [REDACTED:email] now"


def test_guardrail_blocks_a_request(guarded):
    with pytest.raises(anthropic.BadRequestError) as e:
        guarded.messages.create(
            model="guarded-claude",
            max_tokens=50,
            system="token sk-proj-EXAMPLE_not_a_real_key_0000",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "py-secrets" in e.value.message and "sk-proj" not in e.value.message


@pytest.mark.parametrize("model", ["guarded-claude", "guarded-echo"])
def test_guardrail_blocks_a_stream_and_a_completion(guarded, model):
    msgs = [{"role": "user", "content": "the falcon has landed"}]
    seen = []
    with pytest.raises(anthropic.APIError) as e:
        with guarded.messages.stream(model=model, max_tokens=50, messages=msgs) as s:
            for text in s.text_stream:
                seen.append(text)
    assert "py-codenames" in str(e.value)
    assert "falcon" not in "".join(seen)
    r = guarded.messages.create(model=model, max_tokens=50, messages=msgs)
    assert r.stop_reason == "refusal"
    assert r.content == []


@pytest.mark.parametrize("model", ["cached-claude", "cached-echo"])
def test_cache_hits_replay_as_json_and_streams(gateway, model):
    client = Anthropic(base_url=gateway, api_key="sk-py-free", max_retries=0)
    msgs = [{"role": "user", "content": f"cache me {uuid.uuid4()}"}]
    with client.messages.stream(model=model, max_tokens=50, messages=msgs) as s:
        assert "".join(s.text_stream) == msgs[0]["content"]
    for _ in range(100):
        raw = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=msgs)
        if raw.headers["x-aigw-cache"] == "hit":
            break
        time.sleep(0.05)
    assert raw.headers["x-aigw-cache"] == "hit"
    assert raw.parse().content[0].text == msgs[0]["content"]
    with client.messages.stream(model=model, max_tokens=50, messages=msgs) as s:
        assert "".join(s.text_stream) == msgs[0]["content"]
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude-mock", "vertex-claude", "bedrock-claude"])
def test_extended_thinking_round_trip(client, model):
    """Thinking blocks come back signed, natively and through Converse, and the whole
    assistant turn goes back as the SDK returned it."""
    thinking = {"type": "enabled", "budget_tokens": 2000}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.messages.create(model=model, max_tokens=4000, thinking=thinking, tools=[TOOL], messages=messages)
    assert r.content[0].type == "thinking" and r.content[0].signature
    assert "Weather in Paris?" in r.content[0].thinking
    tool = next(b for b in r.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": r.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}]},
    ]
    r = client.messages.create(model=model, max_tokens=4000, thinking=thinking, tools=[TOOL], messages=messages)
    assert r.content[-1].text == "The tool said: 18C"
    with client.messages.stream(
        model=model, max_tokens=4000, thinking=thinking, tools=[TOOL], messages=messages[:1]
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].signature


def test_reasoning_text_is_a_thinking_block_and_cache_tokens_are_reported(client):
    r = client.messages.create(model="reasoner", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert r.content[0].type == "thinking" and r.content[0].thinking == "Reasoned in 9 tokens."
    # A prefix of this test's own: the mock's prompt cache lives as long as the session.
    system = [{"type": "text", "text": f"Library rules {uuid.uuid4()}. " * 30, "cache_control": {"type": "ephemeral"}}]
    usages = [
        client.messages.create(
            model="bedrock-claude", max_tokens=100, system=system, messages=[{"role": "user", "content": "Hi"}]
        ).usage
        for _ in range(2)
    ]
    assert usages[0].cache_creation_input_tokens > 200 and usages[0].cache_read_input_tokens == 0
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens


def test_a_prompt_too_long_for_one_model_moves_to_the_next(client):
    raw = client.messages.with_raw_response.create(
        model="long-context", max_tokens=100, messages=[{"role": "user", "content": "A long prompt"}]
    )
    assert raw.headers["x-aigw-model"] == "gpt-4o-mini"
    assert raw.parse().content[0].text.startswith("Hello")


def test_a_jwt_in_x_api_key(gateway):
    """Anthropic's SDK sends its key as x-api-key: a token works there too."""
    client = Anthropic(base_url=gateway, api_key=jwt_token("py-team", ["claude-mock"]), max_retries=0)
    r = client.messages.create(model="claude-mock", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert r.content[0].text == "Hello from the aigw mock upstream model today."
    forged = jwt_token("py-team", ["claude-mock"])[:-4] + "AAAA"
    with pytest.raises(anthropic.AuthenticationError):
        Anthropic(base_url=gateway, api_key=forged, max_retries=0).messages.create(
            model="claude-mock", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )

