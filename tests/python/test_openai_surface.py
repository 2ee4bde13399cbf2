"""The rest of OpenAI's surface through the official `openai` SDK, unchanged: legacy
completions, moderations, images, audio (multipart uploads whose alias is rewritten in the
form, speech streamed back), and the error paths over raw HTTP."""

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import CALLER_KEY

# A 1x1 PNG, and bytes standing in for audio (the mock counts 16,000 a second).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)
AUDIO = bytes(i * 7 % 251 for i in range(48_000))


@pytest.fixture()
def client(gateway):
    return OpenAI(base_url=f"{gateway}/v1", api_key=CALLER_KEY, max_retries=0)


def test_completions_plain_and_streamed(client):
    r = client.completions.create(model="instruct", prompt="Say this is a test", max_tokens=7)
    assert r.object == "text_completion"
    assert r.choices[0].text == "Say this is a test"
    assert r.usage.prompt_tokens == 5
    stream = client.completions.create(model="instruct", prompt="one two three", stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three"
    # The gateway read the usage for itself and did not hand the caller a chunk it did
    # not ask for; asked, the caller gets it.
    assert all(c.usage is None for c in chunks)
    stream = client.completions.create(
        model="instruct", prompt="one two", stream=True, stream_options={"include_usage": True}
    )
    assert [c.usage.completion_tokens for c in stream if c.usage] == [2]


def test_moderations(client):
    r = client.moderations.create(model="moderation", input=["a kind word", "I will kill the process"])
    assert [x.flagged for x in r.results] == [False, True]
    assert r.results[1].categories.violence is True


def test_images_generate_and_edit(client):
    r = client.images.generate(model="image-model", prompt="a red square", n=2)
    assert len(r.data) == 2 and r.data[0].b64_json
    assert r.usage.output_tokens == 544
    r = client.images.edit(model="image-model", image=("in.png", PNG, "image/png"), prompt="make it blue")
    assert r.data[0].revised_prompt == "make it blue"


def test_audio_transcriptions_and_translations(client):
    t = client.audio.transcriptions.create(model="whisper", file=("talk.wav", AUDIO, "audio/wav"), prompt="names")
    # The provider saw the upstream model in the form and the whole file.
    assert t.text.startswith("transcribed 48000 bytes ")
    assert t.text.endswith(" by whisper-1; prompt: names")
    # (The SDK marks translations deprecated; the endpoint is still served.)
    t = client.audio.translations.create(model="whisper", file=("talk.wav", AUDIO, "audio/wav"))
    assert t.text.startswith("translated 48000 bytes ")
    text = client.audio.transcriptions.create(
        model="whisper", file=("talk.wav", AUDIO, "audio/wav"), response_format="text"
    )
    assert text.startswith("transcribed 48000 bytes ")


def test_audio_speech_streams(client):
    got = b""
    with client.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="Hello there") as r:
        assert r.headers["content-type"] == "audio/mpeg"
        for piece in r.iter_bytes():
            got += piece
    assert len(got) == 8 * 4096


def test_error_paths_over_raw_http(gateway, client):
    auth = {"authorization": f"Bearer {CALLER_KEY}"}
    url = f"{gateway}/v1/audio/transcriptions"
    # A model the key may not use, named inside the form.
    r = httpx.post(url, headers=auth, files={"file": ("a.wav", AUDIO)}, data={"model": "forbidden-model"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "model_not_allowed")
    # Two model fields.
    r = httpx.post(url, headers=auth, files={"file": ("a.wav", AUDIO)}, data={"model": ["whisper", "tts"]})
    assert r.status_code == 400 and "more than one `model`" in r.json()["error"]["message"]
    # An upload over max_request_body_bytes (10 MiB).
    r = httpx.post(url, headers=auth, files={"file": ("a.wav", bytes(10 * 1024 * 1024 + 1))}, data={"model": "whisper"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    # JSON where a form belongs.
    r = httpx.post(url, headers=auth, json={"model": "whisper"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    # A provider kind without the endpoint: the SDK's BadRequestError.
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="claude-mock", prompt="x")
