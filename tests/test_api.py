"""The OpenAI-compatible API, driven by the official ``openai`` client (and raw httpx for SSE framing),
against our real server on the real embedded model.

Token counts are kept tiny: these tests check behaviour, never speed.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from api_fixtures import COPY, GEMMA, serve, two_model_folder

pytestmark = pytest.mark.slow  # real models, servers or browsers

CHAT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def served(models_dir, tmp_path_factory):
    models = two_model_folder(models_dir, tmp_path_factory.mktemp("api-models"))
    with serve(models, tmp_path_factory.mktemp("api-user-data")) as s:
        yield s


@pytest.fixture
def client(served):
    return served.client()


def post(served, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", timeout=300, **kw)


# -- models ---------------------------------------------------------------------------------------------


def test_models_lists_every_model_in_the_folder_loaded_or_not(client):
    ids = [m.id for m in client.models.list()]
    assert GEMMA in ids and COPY in ids
    assert client.models.retrieve(COPY).id == COPY
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert "no-such-model" in err.value.message and GEMMA in err.value.message


# -- chat and text completions ---------------------------------------------------------------------------


def test_chat_completion_has_text_usage_and_timings(client):
    r = client.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=6, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == GEMMA
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    timings = r.model_extra["timings"]
    assert timings["predicted_n"] == r.usage.completion_tokens
    assert timings["ttft_ms"] > 0 and timings["predicted_per_second"] >= 0


def test_streamed_chat_equals_the_whole_reply_and_reports_usage_when_asked(client):
    whole = client.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model=GEMMA, messages=CHAT, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_text_completion_streamed_and_not(client):
    r = client.completions.create(model=GEMMA, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_stop_string_ends_the_text_before_it(client):
    prompt = "The capital of France is"
    full = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=8, temperature=0).choices[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_same_seed_same_sample(client):
    def sample(seed: int) -> str:
        r = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=seed)
        return r.choices[0].text

    assert sample(1234) == sample(1234)


def test_extra_sampler_fields_are_applied_and_wrong_types_refused(client, served):
    r = client.completions.create(
        model=GEMMA, prompt="Once", max_tokens=3, extra_body={"top_k": 1, "min_p": 0.1, "repetition_penalty": 1.1}
    )
    greedy = client.completions.create(model=GEMMA, prompt="Once", max_tokens=3, temperature=0)
    assert r.choices[0].text == greedy.choices[0].text  # top_k=1 is greedy whatever the temperature
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=GEMMA, prompt="Once", max_tokens=3, extra_body={"top_k": "many"})
    assert "top_k" in err.value.message


def test_json_mode_output_parses(client):
    r = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "{}"}], max_tokens=40, temperature=0,
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"sunny": {"type": "boolean"}},
        "required": ["sunny"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Is it sunny?"}], max_tokens=20, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    )  # fmt: skip
    assert isinstance(json.loads(r.choices[0].message.content)["sunny"], bool)


def test_logprobs_for_each_token_with_the_likeliest_alternatives(client):
    r = client.chat.completions.create(
        model=GEMMA, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    tokens = r.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == r.choices[0].message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.token == t.top_logprobs[0].token  # greedy picks the likeliest
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6
    stream = client.completions.create(model=GEMMA, prompt="Once", max_tokens=4, temperature=0, logprobs=1, stream=True)
    pieces = [c.choices[0] for c in stream if c.choices and c.choices[0].text]
    assert all(len(p.logprobs.tokens) == len(p.logprobs.token_logprobs) >= 1 for p in pieces)
    assert "".join(tok for p in pieces for tok in p.logprobs.tokens) == "".join(p.text for p in pieces)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=1, top_logprobs=2)


def test_chat_uses_the_models_prompt_template_like_the_ui(client, served):
    """The API's chat path is webui.chat.service.Chat.stream: same prompt as the UI, so the same prompt token count."""
    from webui.templates.render import build_chat_prompt

    r = client.chat.completions.create(model=GEMMA, messages=CHAT, max_tokens=1, temperature=0)
    prompt = build_chat_prompt(CHAT, served.app.engine.info)
    assert r.usage.prompt_tokens == len(served.app.engine.loaded.model.tokenize(prompt.text))


# -- the model field ---------------------------------------------------------------------------------------


def test_model_field_switches_models(client, served):
    r = client.completions.create(model=COPY, prompt="Hello", max_tokens=2, temperature=0)
    assert r.model == COPY
    info = httpx.get(f"{served.url}/v1/internal/model/info").json()
    assert info["model_name"] == COPY and info["resident"] == [COPY]  # one model at a time by default
    r = client.completions.create(model=GEMMA, prompt="Hello", max_tokens=2, temperature=0)
    assert r.model == GEMMA
    assert served.app.engine.info.name == GEMMA
    cards = {m.id: m.model_extra for m in client.models.list()}
    assert cards[GEMMA]["active"] and not cards[COPY]["loaded"]


def test_switching_by_the_model_field_uses_the_settings_saved_for_that_model(client, served):
    """What the Model tab saved for a model (its loader and settings) is what an API switch loads it with."""
    from backends.llamacpp import LlamaCppSettings
    from webui.models.settings import forget_settings, save_settings

    assert post(served, "/v1/internal/model/load", json={"model_name": GEMMA}).status_code == 200
    save_settings(served.app.settings.user_data, f"{COPY}.gguf", "llama.cpp", LlamaCppSettings(n_ctx=768))
    try:
        r = client.completions.create(model=COPY, prompt="Hello", max_tokens=2, temperature=0)
        assert r.model == COPY and served.app.engine.info.context_length == 768
        r = post(served, "/v1/internal/model/load", json={"model_name": COPY, "settings": {"n_ctx": 512}})
        assert r.json()["context_length"] == 512, "a request's own settings win over the saved ones"
    finally:
        forget_settings(served.app.settings.user_data, f"{COPY}.gguf")
    assert post(served, "/v1/internal/model/load", json={"model_name": GEMMA}).status_code == 200


def test_unknown_and_unsafe_model_names_are_refused(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    assert err.value.code == "model_not_found" and GEMMA in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="../../etc/passwd", messages=CHAT, max_tokens=2)
    assert "may not contain path separators" in err.value.message


# -- serving many -------------------------------------------------------------------------------------------


def test_eight_concurrent_streams_all_complete(served):
    results: dict[int, str] = {}

    def one(i: int) -> None:
        stream = served.client().completions.create(
            model=GEMMA, prompt=f"Number {i}:", max_tokens=3, temperature=0, stream=True
        )
        finishes = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
        results[i] = finishes[-1] if finishes else "none"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results == {i: "length" for i in range(8)}


def test_sse_framing(served):
    body = {"model": GEMMA, "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ") and "\n" not in event
        assert json.loads(event[len("data: ") :])["object"] == "text_completion"


def test_stream_events_group_tokens_by_the_stream_interval_and_lose_no_text(models_dir, tmp_path):
    """Fewer SSE events leave more CPU to the model (the client parses each one): tokens that arrive within
    ``--stream-interval-ms`` of the last event wait for the next one. The first token and the end go at once."""

    def stream_events(interval_s: float) -> tuple[list[str], int]:
        models = two_model_folder(models_dir, tmp_path / "models")
        with serve(models, tmp_path / f"user-data-{interval_s}", stream_interval_s=interval_s) as s:
            stream = s.client().completions.create(
                model=GEMMA, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = list(stream)
        texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
        return texts, chunks[-1].usage.completion_tokens

    every, tokens = stream_events(0)
    grouped, same_tokens = stream_events(60)  # nothing arrives 60 s after the first token: first + the rest
    assert tokens == same_tokens == 12
    assert len(every) == 12  # one event per token
    assert len(grouped) == 2 and "".join(grouped) == "".join(every)


def test_a_client_that_disconnects_has_its_generation_cancelled_and_the_next_starts(served):
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=300) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
    # the connection is closed here, mid-stream
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline and record is None:
        found = httpx.get(f"{served.url}/v1/internal/generations").json()["data"]
        record = next((g for g in found if g["disconnected"] and g["cancel_to_end_ms"] is not None), None)
        time.sleep(0.05)
    assert record is not None, "the disconnected generation was never cancelled"
    assert record["finish_reason"] == "cancelled"
    print(f"cancelled {record['cancel_to_end_ms']} ms after the disconnect was seen")
    r = served.client().completions.create(model=GEMMA, prompt="Next", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2


def test_a_client_that_gives_up_on_a_whole_reply_has_it_cancelled_too(served):
    def disconnected() -> int:
        found = httpx.get(f"{served.url}/v1/internal/generations").json()["data"]
        return sum(1 for g in found if g["disconnected"] and g["finish_reason"] == "cancelled")

    before = disconnected()
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting and closes the connection
        httpx.post(f"{served.url}/v1/completions", json=body, timeout=httpx.Timeout(300, read=1.0))
    deadline = time.monotonic() + 120
    while disconnected() == before:
        assert time.monotonic() < deadline, "the abandoned generation was never cancelled"
        time.sleep(0.05)


def test_stop_generation_endpoint_ends_a_running_reply(served):
    result = {}

    def long_one() -> None:
        result["r"] = served.client().completions.create(model=GEMMA, prompt="A long story:", max_tokens=1000)

    t = threading.Thread(target=long_one)
    t.start()
    deadline = time.monotonic() + 120
    while not post(served, "/v1/internal/stop-generation").json()["stopped"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t.join(timeout=120)
    r = result["r"]
    assert r.model_extra["timings"]["cancelled"] is True and r.usage.completion_tokens < 1000


# -- internal endpoints -------------------------------------------------------------------------------------


def test_tokens_encode_decode_and_count(served):
    encoded = post(served, "/v1/internal/encode", json={"text": "Hello world", "add_special": False}).json()
    assert encoded["length"] == len(encoded["tokens"]) > 0
    assert post(served, "/v1/internal/decode", json={"tokens": encoded["tokens"]}).json()["text"] == "Hello world"
    assert post(served, "/v1/internal/token-count", json={"text": "Hello world", "add_special": False}).json() == {
        "length": encoded["length"]
    }
    health = httpx.get(f"{served.url}/v1/internal/health").json()
    assert health["status"] == "ok" and health["model"] == GEMMA


def test_internal_load_takes_loader_settings_but_never_unsafe_ones(served):
    r = post(served, "/v1/internal/model/load", json={"model_name": COPY, "settings": {"n_ctx": 512}})
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == COPY and r.json()["context_length"] == 512
    for key in ("trust_remote_code", "model_path"):
        r = post(served, "/v1/internal/model/load", json={"model_name": COPY, "settings": {key: True}})
        assert r.status_code == 403 and key in r.json()["error"]["message"]
    r = post(served, "/v1/internal/model/load", json={"model_name": COPY, "settings": {"no_such": 1}})
    assert r.status_code == 400 and "n_ctx" in r.json()["error"]["message"]
    r = post(served, "/v1/internal/model/load", json={"model_name": "/etc/passwd"})
    assert r.status_code == 400
    assert post(served, "/v1/internal/model/unload", json={}).status_code == 200
    r = post(served, "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
    assert post(served, "/v1/internal/model/load", json={"model_name": GEMMA}).status_code == 200


# -- bad input: a clear 4xx, and the server keeps serving --------------------------------------------------


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"messages": "hello"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n must be 1"),
        ({"messages": [{"role": "user", "content": "x"}], "preset": "No Such Preset"}, 404, "no preset named"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "nope"}, 404, "not found"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "../../etc/passwd"}, 400, "path separators"),
        ({"messages": [{"role": "user", "content": "x" * 20000}], "max_tokens": 2}, 400, "context"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(served, body, status, words):
    json_header = {"content-type": "application/json"}
    kw = {"content": body, "headers": json_header} if isinstance(body, bytes) else {"json": body}
    r = post(served, "/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in error["message"].lower()
    assert set(error) == {"message", "type", "param", "code"}
    assert httpx.get(f"{served.url}/v1/models").status_code == 200


def test_mode_and_character_go_to_the_chat_modes_or_are_refused_clearly(served):
    msg = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    if not hasattr(served.app, "characters"):  # a build without chat modes says so instead of ignoring the fields
        for field in ("mode", "character"):
            r = post(served, "/v1/chat/completions", json={**msg, field: "x"})
            assert r.status_code == 400 and "not available yet" in r.json()["error"]["message"]
        return
    r = post(served, "/v1/chat/completions", json={**msg, "character": "No Such Person"})
    assert r.status_code == 404 and "no character" in r.json()["error"]["message"]
    r = post(served, "/v1/chat/completions", json={**msg, "mode": "sideways"})
    assert r.status_code == 400 and "mode" in r.json()["error"]["message"]
    assert post(served, "/v1/chat/completions", json={**msg, "mode": "instruct"}).status_code == 200


def test_a_ten_megabyte_prompt_is_refused_with_413(served):
    r = post(served, "/v1/completions", json={"prompt": "x" * 10_000_000, "max_tokens": 1})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = served.client().completions.create(model=GEMMA, prompt="Still", max_tokens=1)
    assert r.usage.completion_tokens == 1
