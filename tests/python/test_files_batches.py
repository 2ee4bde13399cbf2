"""Files and batches through the official `openai` SDK: upload, list, retrieve, content,
delete; create, retrieve, list, cancel. Another owner (a key of its own) sees none of it."""

import json

import openai
import pytest
from openai import OpenAI

from conftest import CALLER_KEY, jwt_token


@pytest.fixture()
def client(gateway):
    return OpenAI(base_url=f"{gateway}/v1", api_key=CALLER_KEY, max_retries=0)


@pytest.fixture()
def stranger(gateway):
    return OpenAI(base_url=f"{gateway}/v1", api_key="sk-py-free", max_retries=0)


def batch_file(*models):
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": m, "messages": [{"role": "user", "content": "hi"}]}}
        for i, m in enumerate(models)
    ]
    return ("input.jsonl", "\n".join(json.dumps(l) for l in lines).encode(), "application/jsonl")


def test_files_and_a_batch_through_the_sdk(client, stranger):
    f = client.files.create(file=batch_file("gpt-4o-mini", "gpt-4o-mini"), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch"
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list()]
    # The provider got the upstream model.
    assert b'"model":"mock-gpt"' in client.files.content(f.id).read()

    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.id.startswith("batch_") and b.input_file_id == f.id
    done = client.batches.retrieve(b.id)
    assert done.status == "completed" and done.request_counts.total == 2
    assert b.id in [x.id for x in client.batches.list()]
    out = client.files.content(done.output_file_id).text.splitlines()
    assert len(out) == 2
    assert json.loads(out[0])["response"]["body"]["usage"]["completion_tokens"] == 20

    # Another owner: every id is absent, every list empty of them.
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(b.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.delete(f.id)
    assert f.id not in [x.id for x in stranger.files.list()]
    # A JWT caller is an owner of its issuer's namespace: no match either.
    sso = OpenAI(base_url=client.base_url, api_key=jwt_token("py", ["gpt-4o-mini"]), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sso.files.retrieve(f.id)
    assert b.id not in [x.id for x in sso.batches.list()]
    assert b.id not in [x.id for x in stranger.batches.list()]

    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_a_batch_can_be_cancelled(client):
    f = client.files.create(file=batch_file("gpt-4o-mini"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    c = client.batches.cancel(b.id)
    assert c.id == b.id and c.status == "cancelled"


def test_a_line_with_a_forbidden_model_is_refused_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=batch_file("gpt-4o-mini", "forbidden-model"), purpose="batch")
    assert "line 2" in str(e.value)
