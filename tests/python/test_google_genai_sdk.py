"""Wire compatibility with Google's `google-genai` Python SDK, pointed at aigw with
`http_options.base_url`: generateContent, streaming, countTokens and embeddings, to a
Gemini provider (passed through) and an OpenAI-style provider (translated through chat),
and the SDK's own view of the gateway's errors."""

import pytest
from google import genai
from google.genai import errors, types

from conftest import CALLER_KEY

HELLO = "Hello from the aigw mock upstream model today."
# Gemini targets (the Gemini API's and Vertex AI's), passed through; OpenAI-style,
# Anthropic, Vertex AI's Claude and Bedrock targets, reached through the chat hub.
MODELS = ["gemini-mock", "vertex-gemini", "gpt-4o-mini", "claude-mock", "vertex-claude", "bedrock-nova"]


def make_client(gateway, key=CALLER_KEY, version="v1beta"):
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=gateway, api_version=version),
    )


@pytest.fixture()
def client(gateway):
    return make_client(gateway)


@pytest.mark.parametrize("model", MODELS)
def test_generate_content(client, model):
    r = client.models.generate_content(
        model=model,
        contents="Say hello",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64, temperature=0.3),
    )
    assert r.text == HELLO
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert u.prompt_token_count > 0
    assert u.candidates_token_count == 8
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + (u.thoughts_token_count or 0)


@pytest.mark.parametrize("model", ["gemini-mock", "gpt-4o-mini"])
def test_generate_content_on_v1(gateway, model):
    # The client is kept: the SDK closes its connection pool when the client is dropped.
    v1 = make_client(gateway, version="v1")
    r = v1.models.generate_content(model=model, contents="Say hello")
    assert r.text == HELLO


@pytest.mark.parametrize("model", MODELS)
def test_generate_content_stream(client, model):
    chunks = list(client.models.generate_content_stream(model=model, contents="Say hello"))
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks) == HELLO
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count == 8


@pytest.mark.parametrize("model", MODELS)
def test_function_calling_round_trip(client, model):
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                description="Weather for a city",
                parameters=types.Schema(type="OBJECT", properties={"query": types.Schema(type="STRING")}),
            )
        ]
    )
    config = types.GenerateContentConfig(
        tools=[tool], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
    )
    r = client.models.generate_content(model=model, contents="What is the weather?", config=config)
    call = r.function_calls[0]
    assert call.name == "get_weather"
    history = [
        types.Content(role="user", parts=[types.Part(text="What is the weather?")]),
        r.candidates[0].content,
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"result": "sunny"})],
        ),
    ]
    r = client.models.generate_content(model=model, contents=history, config=config)
    assert "sunny" in r.text


@pytest.mark.parametrize("model", ["gemini-mock", "vertex-gemini"])
def test_count_tokens_native(client, model):
    r = client.models.count_tokens(model=model, contents="twelve chars but forty bytes of text here")
    # The mock's count (it counts the role's bytes too), passed through.
    assert r.total_tokens == 12


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-mock", "vertex-claude", "bedrock-nova"])
def test_count_tokens_estimated(client, model):
    r = client.models.count_tokens(model=model, contents="twelve chars but forty bytes of text here")
    # A token per four bytes of text, the gateway's own estimate on a non-Gemini target.
    assert r.total_tokens == 11


def test_embed_content_batch(client):
    # The SDK sends a list as one batchEmbedContents request per text (but to models named
    # "gemini...", which it treats as multimodal: one content of many parts).
    r = client.models.embed_content(model="text-embedding-3-small", contents=["hello", "world"])
    assert len(r.embeddings) == 2
    assert all(len(e.values) == 8 for e in r.embeddings)
    assert r.embeddings[0].values != r.embeddings[1].values
    r = client.models.embed_content(model="gemini-mock", contents=["hello", "world"])
    assert len(r.embeddings) == 1


def test_embeddings_are_the_same_native_and_translated(client):
    native = client.models.embed_content(model="gemini-mock", contents="hello")
    translated = client.models.embed_content(model="text-embedding-3-small", contents="hello")
    assert native.embeddings[0].values == translated.embeddings[0].values


def test_errors_reach_the_sdk_in_googles_envelope(gateway, client):
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="no-such-alias", contents="hi")
    assert e.value.code == 404
    assert e.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as e:
        wrong = make_client(gateway, key="sk-wrong")
        wrong.models.generate_content(model="gemini-mock", contents="hi")
    assert e.value.code == 401
    assert e.value.status == "UNAUTHENTICATED"
    # `forbidden-model` exists but the key may not use it.
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="forbidden-model", contents="hi")
    assert e.value.code == 403
    assert e.value.status == "PERMISSION_DENIED"
    # Anthropic models have no embeddings: refused before any upstream call.
    with pytest.raises(errors.ClientError) as e:
        client.models.embed_content(model="claude-mock", contents="hi")
    assert e.value.code == 400


def test_models_list_and_get(client):
    # Pages of 2: the SDK follows nextPageToken until the list ends.
    names = [m.name for m in client.models.list(config=types.ListModelsConfig(page_size=2))]
    assert len(names) == len(set(names)) > 2
    for alias in MODELS:
        assert f"models/{alias}" in names
    # Only the models this key may use are listed.
    assert "models/forbidden-model" not in names
    m = client.models.get(model="gemini-mock")
    assert m.name == "models/gemini-mock"
    assert "generateContent" in m.supported_actions
    for absent in ["forbidden-model", "no-such-alias"]:
        with pytest.raises(errors.ClientError) as e:
            client.models.get(model=absent)
        assert e.value.code == 404
        assert e.value.status == "NOT_FOUND"
