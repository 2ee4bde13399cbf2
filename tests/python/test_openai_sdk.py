"""Wire compatibility with the official `openai` Python SDK."""

import openai
import pytest
from openai import OpenAI

from conftest import CALLER_KEY


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
    assert ids == ["gpt-4o-mini", "text-embedding-3-small", "rate-limited"]
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
