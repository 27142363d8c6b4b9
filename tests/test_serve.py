"""`korlm serve`: real fine-tuned model directories (a tiny random-init BERT fine-tuned for
one epoch with `korlm.evaluation.finetune.finetune`) behind the FastAPI app, through FastAPI's
TestClient and a real uvicorn server on a free loopback port.

Test doubles: `EchoModel` in `test_batcher_keeps_every_result_with_its_request` (its
predictions are its inputs, so any mix-up between requests shows exactly), plain predict
functions in the batcher's failure tests, and `PoisonedModel`: the real fine-tuned model,
except that a sentinel text is handed to the real tokenizer as a lone surrogate. Validation
now stops every lone surrogate before the model, so the sentinel is how a batch that the
real model call fails on (as it did before validation) still reaches the batcher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from korlm.errors import KorlmError
from korlm.serve.server import (
    MicroBatcher,
    ModelCallError,
    ServeCounters,
    ServeSettings,
    create_app,
    text_problem,
)
from tests.test_evaluate import _write_user_tasks, write_nsmc_slice
from tests.test_pretrain import build_tokenizer

FT = dict(max_train_examples=48, max_eval_examples=24, epochs=1, batch_size=16, max_seq_length=32,
          seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random-init BERT checkpoint, its tokenizer and the task data."""
    from tokenizers import Tokenizer

    from korlm.modeling.build import build_masked_lm
    from korlm.modeling.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("serve")
    tokenizer_dir = build_tokenizer(root / "tokenizer", num_sentences=300, vocab_size=600)
    vocab_size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    task = build_masked_lm("bert", "tiny", vocab_size, 32)
    save_checkpoint(task, str(root / "checkpoint"), {
        "model": "bert", "size": "tiny", "vocab_size": vocab_size, "max_seq_length": 32, "step": 0})
    nsmc = write_nsmc_slice(root / "data" / "nsmc", num_train=80, num_test=24)
    return root, tokenizer_dir, nsmc, _write_user_tasks(root / "tasks")


@pytest.fixture(scope="module")
def models_dir(base):
    """A classification (NSMC slice) and a regression (sentence pairs, 0-5) model directory
    fine-tuned for one epoch with `korlm finetune`."""
    from korlm.evaluation.finetune import finetune

    root, tokenizer_dir, nsmc, task_files = base
    out = {}
    for name, task_name, data_dir in (("classify", "nsmc", str(nsmc)),
                                      ("similarity", str(task_files["sts"]), None)):
        finetune(str(root / "checkpoint"), str(tokenizer_dir), task_name, data_dir,
                 str(root / name), **FT)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def classify_client(models_dir):
    from fastapi.testclient import TestClient

    app = create_app(str(models_dir["classify"]),
                     settings=ServeSettings(max_items=4, max_chars=40, max_wait_ms=1))
    with TestClient(app) as client:
        _wait_ready(client)
        yield client


def _wait_ready(client, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and r.json()["status"] == "loading", r.text
        time.sleep(0.05)
    raise AssertionError("model not loaded in time")


def test_classify_endpoint_matches_the_model(classify_client, models_dir):
    from korlm.evaluation.finetune import load_finetuned

    model = load_finetuned(str(models_dir["classify"]))
    info = classify_client.get("/readyz").json()
    assert info["ready"] and info["task"] == model.task_name == "nsmc"
    assert info["task_type"] == "classification" and info["labels"] == list(model.label_names)
    assert info["max_seq_length"] == model.max_seq_length and info["endpoint"] == "/v1/classify"
    assert classify_client.get("/healthz").json()["status"] == "ok"

    texts = ["아 더빙.. 진짜 짜증나네요 목소리", "굳 ㅋ", "최고의 영화"]
    r = classify_client.post("/v1/classify", json={"items": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "nsmc" and len(body["results"]) == 3
    expected = model.classify(texts)
    for got, want in zip(body["results"], expected, strict=True):
        assert got["label"] == want["label"] and got["label"] in model.label_names
        assert got["label_id"] == model.label_names.index(got["label"])
        assert set(got["probabilities"]) == set(model.label_names)
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        for k, v in want["probabilities"].items():
            assert got["probabilities"][k] == pytest.approx(v, abs=2e-6)


def _post_json(client, path: str, body) -> object:
    """POST ``body`` as ASCII JSON (``\\ud800`` escapes and all, as a client in another
    language may send it; httpx's own encoder cannot encode a lone surrogate)."""
    return client.post(path, content=json.dumps(body).encode("ascii"),
                       headers={"content-type": "application/json"})


@pytest.mark.parametrize("body, message", [
    ({"items": []}, "items: List should have at least 1 item"),
    ({"items": [{"text": ""}]}, "items.0.text: must not be empty"),
    ({"items": [{"text": "좋다"}, {"text": "   "}]}, "items.1.text: must not be empty"),
    ({"items": [{"text": 5}]}, "items.0.text: Input should be a valid string"),
    ({"items": [{"text": ["a"]}]}, "items.0.text: Input should be a valid string"),
    ({}, "items: Field required"),
    ({"items": [{"txt": "좋다"}]}, "items.0.text: Field required"),
    ({"items": [{"text": "가" * 41}]}, "items.0.text: is 41 characters long; the limit is 40"),
    ({"items": [{"text": "좋다"}] * 5}, "items: List should have at most 4 items"),
    ({"items": [{"text": "좋다", "text_b": "별로"}]}, "items.0.text_b: not allowed"),
    ({"items": "좋다"}, "items: Input should be a valid list"),
    # text the tokenizer cannot encode
    ({"items": [{"text": "좋다"}, {"text": "\ud800"}]},
     "items.1.text: contains a lone surrogate (U+D800 at character 0): not valid Unicode text"),
    ({"items": [{"text": "좋\udc00다"}]}, "items.0.text: contains a lone surrogate (U+DC00 at character 1)"),
    ({"items": [{"text": "\x00"}]}, "items.0.text: has nothing to encode: only control, format or "
                                    "whitespace characters (U+0000)"),
    ({"items": [{"text": "좋다"}, {"text": "좋다"}, {"text": "\x00\x01 \x1f\x7f"}]},
     "items.2.text: has nothing to encode"),
    ({"items": [{"text": "\u200b\u200d\ufeff\u202e"}]},
     "items.0.text: has nothing to encode: only control, format or whitespace characters "
     "(U+200B, U+200D, U+FEFF, ...)"),
    ({"items": [{"text": "\t\u3000\x85"}]}, "items.0.text: must not be empty or only whitespace"),
    # the static check passes these; the model's WordPiece normalizer drops every character
    ({"items": [{"text": "\ufffd\ufffd"}]},
     "items.0.text: encodes to no token with this model's tokenizer (its normalizer drops "
     "every character: U+FFFD)"),
    ({"items": [{"text": "좋다"}, {"text": "\ue000 \U000f0000"}]},
     "items.1.text: encodes to no token with this model's tokenizer"),
    ({"items": [{"te\ud800xt": "좋다"}]}, "items.0: Input should be a valid string"),
])
def test_invalid_requests_get_422_with_a_clear_message(classify_client, body, message):
    before = classify_client.get("/metrics.json").json()
    r = _post_json(classify_client, "/v1/classify", body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"], r.json()
    assert "\n" not in r.json()["message"] and "Traceback" not in r.text
    after = classify_client.get("/metrics.json").json()
    assert after["rejected_requests"] == before["rejected_requests"] + 1
    assert after["model_calls"] == before["model_calls"]  # nothing reached the model


def test_unusual_but_encodable_text_is_served(classify_client, models_dir):
    """The line is drawn by what the tokenizer does: text with anything it keeps (emoji and
    other scripts become [UNK], a NUL or a zero-width space next to words is dropped) is
    answered like any other text."""
    texts = ["😀", "🫨", "good 좋다 😀 ß", "\x00좋다", "좋\u200b다", "e\u0301", "가", "\u3164",
             "가" * 40]
    assert all(text_problem(t, 40) is None for t in texts)
    r = _post_json(classify_client, "/v1/classify", {"items": [{"text": t} for t in texts[:4]]})
    assert r.status_code == 200, r.text
    r2 = _post_json(classify_client, "/v1/classify", {"items": [{"text": t} for t in texts[4:8]]})
    assert r2.status_code == 200, r2.text
    assert len(r.json()["results"]) == len(r2.json()["results"]) == 4
    # the tokenizer check reads a 64-character prefix, and the whole text only when the
    # prefix gave no token
    model = classify_client.app.state.korlm["model"]
    assert model.untokenized(["\ufffd" * 100 + "좋다", "\ufffd" * 100, "좋다", "\ue000 \ufffd",
                              "\ufffd" * 63 + "좋다"]) == [1, 3]


@pytest.mark.parametrize("content, headers, status, message", [
    ('{"items": [{"text": "좋다"}]}'.encode(), {"content-type": "text/plain"}, 422,
     "the body has content type 'text/plain', not JSON: send it as JSON with "
     "Content-Type: application/json"),
    (b"text=%EC%A2%8B", {"content-type": "application/x-www-form-urlencoded"}, 422,
     "content type 'application/x-www-form-urlencoded', not JSON"),
    (b"--b\r\n\r\nx\r\n--b--", {"content-type": "multipart/form-data; boundary=b"}, 422,
     "content type 'multipart/form-data', not JSON"),
    ('{"items": [{"text": "좋다"}]}'.encode(), {}, 422, "the body has no content type: send it as JSON"),
    ('{"items": [{"text": "좋다"}'.encode(), {"content-type": "application/json"}, 422,
     "body: not valid JSON: Expecting ',' delimiter (character 25)"),
    (b"", {"content-type": "application/json"}, 422, "body: Field required"),
    (b'{"items": [{"text": "\xff\xfe"}]}', {"content-type": "application/json"}, 422,
     "body: not valid UTF-8 (byte 0xff at offset 21)"),
    (b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"content-type": "application/json"},
     422, "body: JSON nested too deeply to parse"),
    (b'{"items": [{"text": "' + "가".encode() * 400_000 + b'"}]}',
     {"content-type": "application/json"}, 413,
     "the request body is 1200025 bytes (Content-Length); the limit is 1048576 bytes "
     "(--max-body-bytes)"),
])
def test_bodies_that_are_not_json_or_too_large(classify_client, content, headers, status, message):
    before = classify_client.get("/metrics.json").json()
    r = classify_client.post("/v1/classify", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["message"] and "\n" not in r.json()["message"], r.json()
    after = classify_client.get("/metrics.json").json()
    assert after["rejected_requests"] == before["rejected_requests"] + 1
    assert after["model_calls"] == before["model_calls"] and after["failed_requests"] == 0


def test_other_task_endpoints_answer_409_naming_the_task_type(classify_client):
    for path, body in (("/v1/similarity", {"items": [{"text_a": "a", "text_b": "b"}]}),
                       ("/v1/answer", {"items": [{"question": "q", "context": "c"}]}),
                       ("/v1/answer", {"items": []})):  # the task check comes before validation
        r = classify_client.post(path, json=body)
        assert r.status_code == 409, r.text
        assert "has task type classification: it serves POST /v1/classify, not " in r.json()["message"]


def test_openapi_lists_the_endpoints(classify_client):
    spec = classify_client.get("/openapi.json").json()
    assert {"/v1/similarity", "/v1/classify", "/v1/answer", "/healthz", "/readyz",
            "/metrics", "/metrics.json"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/v1/classify"]["post"]
    assert classify_client.get("/docs").status_code == 200


def test_similarity_endpoint_clips_and_thresholds(models_dir):
    from fastapi.testclient import TestClient

    from korlm.evaluation.finetune import load_finetuned

    model = load_finetuned(str(models_dir["similarity"]))
    assert model.task_type == "regression"
    pairs = [("아 더빙.. 진짜 짜증나네요 목소리", "굳 ㅋ"), ("최고의 영화", "최고의 영화"),
             ("재밌다", "지루하다")]
    raw = model.regress([a for a, _ in pairs], [b for _, b in pairs])
    with TestClient(create_app(str(models_dir["similarity"]))) as client:
        info = _wait_ready(client)
        assert info["task_type"] == "regression" and info["labels"] is None
        r = client.post("/v1/similarity",
                        json={"items": [{"text_a": a, "text_b": b} for a, b in pairs]})
        assert r.status_code == 200, r.text
        for got, want in zip(r.json()["results"], raw, strict=True):
            assert got["score"] == pytest.approx(min(5.0, max(0.0, want)), abs=1e-4)
            assert 0.0 <= got["score"] <= 5.0 and got["similar"] == (got["score"] >= 3.0)
        r = client.post("/v1/classify", json={"items": [{"text": "좋다"}]})
        assert r.status_code == 409 and "has task type regression: it serves POST /v1/similarity" in r.json()["message"]
        r = client.post("/v1/similarity", json={"items": [{"text_a": "좋다"}]})
        assert r.status_code == 422 and "items.0.text_b: Field required" in r.json()["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _live_server(app, timeout: float = 60.0):
    """``app`` on a real uvicorn server on a free loopback port, ready: yields its base URL."""
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _reviews(n: int) -> list[str]:
    lines = (Path(__file__).resolve().parents[1] / "data" / "sample" / "eval" / "nsmc" /
             "ratings_test.txt").read_text(encoding="utf-8").splitlines()[1:]
    return [t for t in (line.split("\t")[1] for line in lines) if t.strip()][:n]


def test_concurrent_requests_are_batched_on_a_real_server(models_dir):
    """A real uvicorn server on loopback: 24 concurrent requests are served by fewer
    model calls, and each gets the predictions for its own texts."""
    import httpx

    from korlm.evaluation.finetune import load_finetuned

    app = create_app(str(models_dir["classify"]),
                     settings=ServeSettings(max_batch_size=16, max_wait_ms=200))
    with _live_server(app) as base:
        reviews = _reviews(48)
        requests = [reviews[i * 2:i * 2 + 2] for i in range(24)]

        async def drive():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(*[
                    client.post("/v1/classify", json={"items": [{"text": t} for t in texts]})
                    for texts in requests])

        responses = asyncio.run(drive())
        assert [r.status_code for r in responses] == [200] * 24
        counters = httpx.get(f"{base}/metrics.json").json()
        assert counters["requests"] == 24 and counters["items"] == 48
        assert 1 <= counters["model_calls"] < 24, counters
        assert counters["largest_batch"] <= 16
        model = load_finetuned(str(models_dir["classify"]))
        expected = model.classify([t for texts in requests for t in texts])
        got = [res for r in responses for res in r.json()["results"]]
        # the texts get distinct predictions (well beyond float32 noise), so a mix-up shows
        first = [w["probabilities"][model.label_names[0]] for w in expected]
        assert max(first) - min(first) > 1e-4
        for g, w in zip(got, expected, strict=True):
            assert g["label"] == w["label"]
            for k, v in w["probabilities"].items():
                assert g["probabilities"][k] == pytest.approx(v, abs=2e-6)


class EchoModel:
    """Test double for the batcher: the prediction of an input is the input itself."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, inputs):
        self.calls.append(len(inputs))
        time.sleep(0.01)
        return [f"{a}|{b}" for a, b in inputs]


def test_batcher_keeps_every_result_with_its_request():
    echo = EchoModel()

    async def main():
        counters = ServeCounters()
        batcher = MicroBatcher(echo, max_batch_size=8, max_wait_ms=20, counters=counters)
        batcher.start()
        requests = [[(f"r{r}", f"i{i}") for i in range(1 + r % 5)] for r in range(30)]

        async def one(r, inputs):
            await asyncio.sleep((r % 3) * 0.003)
            return await batcher.submit(inputs)

        results = await asyncio.gather(*[one(r, inp) for r, inp in enumerate(requests)])
        await batcher.stop()
        return requests, results, counters

    requests, results, counters = asyncio.run(main())
    for inputs, out in zip(requests, results, strict=True):
        assert out == [f"{a}|{b}" for a, b in inputs]
    n_items = sum(len(r) for r in requests)
    assert sum(echo.calls) == n_items == counters.items
    assert max(echo.calls) <= 8 and len(echo.calls) == counters.model_calls < len(requests)


def _failing_on(*bad: str):
    """A batched predict that, like a tokenizer meeting text it cannot encode, fails the
    whole call when any of its inputs is in ``bad``; it answers the others in upper case."""
    calls: list[list[str]] = []

    def predict(inputs):
        calls.append([a for (a,) in inputs])
        time.sleep(0.002)
        if any(a in bad for (a,) in inputs):
            raise ValueError(f"cannot encode {bad}\n  (a second line that the client never sees)")
        return [a.upper() for (a,) in inputs]
    return predict, calls


def test_a_failing_item_fails_only_its_own_request():
    """Two poisoned requests among 14 gathered into one batch: the batch is split until the
    two items fail alone; the 12 others (and nothing else) are answered with their own
    results, the two get ModelCallError naming their item, blamed on the input."""
    predict, calls = _failing_on("boom", "bang")
    counters = ServeCounters()

    async def main():
        batcher = MicroBatcher(predict, max_batch_size=32, max_wait_ms=100, counters=counters,
                               probe=("probe",))
        batcher.start()
        requests = [[(f"r{r}i{i}",) for i in range(2)] for r in range(12)]
        requests.insert(3, [("fine",), ("boom",), ("fine too",)])
        requests.insert(9, [("bang",)])
        results = await asyncio.gather(*[batcher.submit(inputs) for inputs in requests],
                                       return_exceptions=True)
        await batcher.stop()
        return requests, results

    requests, results = asyncio.run(main())
    assert len(calls[0]) == 28  # one gathered batch: the 14 requests' 28 items
    for inputs, out in zip(requests, results, strict=True):
        names = [a for (a,) in inputs]
        if "boom" in names or "bang" in names:
            assert isinstance(out, ModelCallError) and out.input_fault
            assert out.index == next(i for i, a in enumerate(names) if a in ("boom", "bang"))
            assert str(out).startswith("ValueError: cannot encode") and "\n" not in str(out)
        else:
            assert out == [a.upper() for a in names]
    # every valid item was computed, and the probe never needed: the batch answered others
    answered = [a for call in calls for a in call if a not in ("boom", "bang")]
    assert set(answered) >= {a for inputs in requests for (a,) in inputs} - {"boom", "bang"}
    assert "probe" not in answered
    assert counters.failed_items == 2 and counters.items == 28
    assert counters.isolation_calls == len(calls) - 1 < 2 * 2 * 5  # 2k·log2(n/k) bound
    assert counters.model_calls == len(calls) and counters.failed_model_calls >= 3


def test_a_lone_failing_item_is_blamed_on_the_model_only_when_the_probe_fails_too():
    """A batch whose items all fail: the probe tells a bad input (probe answered: 422) from
    a broken model (probe fails too: 500). Without a probe the server takes the blame."""
    async def submit_alone(predict, probe):
        batcher = MicroBatcher(predict, max_batch_size=4, max_wait_ms=0,
                               counters=ServeCounters(), probe=probe)
        batcher.start()
        with pytest.raises(ModelCallError) as failed:
            await batcher.submit([("boom",), ("boom",)])
        ok = await batcher.submit([("ok",)]) if probe != ("boom",) else None
        await batcher.stop()
        return failed.value, ok

    predict, calls = _failing_on("boom")
    error, ok = asyncio.run(submit_alone(predict, ("probe",)))
    assert error.input_fault and error.index == 0 and ok == ["OK"]
    assert calls == [["boom", "boom"], ["boom"], ["boom"], ["probe"], ["ok"]]
    error, _ = asyncio.run(submit_alone(_failing_on("boom")[0], ("boom",)))  # probe fails too
    assert not error.input_fault
    error, _ = asyncio.run(submit_alone(_failing_on("boom")[0], None))
    assert not error.input_fault


def test_readyz_is_503_until_the_model_is_loaded(models_dir):
    from fastapi.testclient import TestClient

    from korlm.evaluation.finetune import load_finetuned

    release = threading.Event()

    def slow_loader(path):  # the real loader, held back until the test releases it
        assert release.wait(60)
        return load_finetuned(path)

    with TestClient(create_app(str(models_dir["similarity"]), loader=slow_loader)) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = client.post("/v1/similarity", json={"items": [{"text_a": "a", "text_b": "b"}]})
        assert r.status_code == 503 and "still loading" in r.json()["message"]
        release.set()
        assert _wait_ready(client)["task_type"] == "regression"


def test_a_directory_that_is_not_a_model(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from korlm.cli import main

    (tmp_path / "empty").mkdir()
    with TestClient(create_app(str(tmp_path / "empty"))) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "load failed" and r.json()["error"]
        r = client.post("/v1/classify", json={"items": [{"text": "a"}]})
        assert r.status_code == 503 and "could not be loaded" in r.json()["message"]

    # the CLI: the server starts, the load fails, the server stops, one line on stderr
    assert main(["serve", str(tmp_path / "empty"), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("korlm serve: error: could not load the model from")
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(KorlmError, match="max-batch-size must be at least 1"):
        ServeSettings(max_batch_size=0)



@pytest.mark.slow  # one more fine-tune (~20 s on a loaded machine)
def test_answer_endpoint_returns_spans_of_the_context(base):
    from fastapi.testclient import TestClient

    from korlm.evaluation.finetune import finetune, load_finetuned

    root, tokenizer_dir, _, task_files = base
    finetune(str(root / "checkpoint"), str(tokenizer_dir), str(task_files["qa"]), None,
             str(root / "qa"), doc_stride=6, **FT)
    model = load_finetuned(str(root / "qa"))
    data = json.loads((task_files["qa"].parent / "qa.json").read_text(encoding="utf-8"))
    paragraphs = [p for a in data["data"] for p in a["paragraphs"] if p["qas"]][:3]
    items = [{"question": p["qas"][0]["question"], "context": p["context"]} for p in paragraphs]
    expected = model.answer([i["question"] for i in items], [i["context"] for i in items])
    with TestClient(create_app(str(root / "qa"), settings=ServeSettings(max_chars=400))) as client:
        info = _wait_ready(client)
        assert info["task_type"] == "extractive-qa" and info["endpoint"] == "/v1/answer"
        r = client.post("/v1/answer", json={"items": items})
        assert r.status_code == 200, r.text
        for item, got, want in zip(items, r.json()["results"], expected, strict=True):
            assert 0 <= got["start"] <= got["end"] <= len(item["context"])
            assert got["answer"] == item["context"][got["start"]:got["end"]] == want["answer"]
            assert (got["start"], got["end"]) == (want["start"], want["end"])
            assert got["score"] == pytest.approx(want["score"], rel=1e-4, abs=1e-4)
        r = client.post("/v1/answer", json={"items": [{"question": "누구?", "context": "가" * 401}]})
        assert r.status_code == 422 and "items.0.context: is 401 characters long" in r.json()["message"]
        r = client.post("/v1/classify", json={"items": [{"text": "좋다"}]})
        assert r.status_code == 409 and "has task type extractive-qa: it serves POST /v1/answer" in r.json()["message"]


def test_serve_settings_from_the_config_file_are_validated(tmp_path, capsys):
    from korlm.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "c.yaml").write_text("serve:\n  max_items: 0\n", encoding="utf-8")
    assert main(["serve", str(tmp_path / "model"), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "serve.max_items: input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "model"), "--max-wait-ms", "-1"]) == 2
    assert "serve.max_wait_ms: input should be greater than or equal to 0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "model"), "--max-body-bytes", "100"]) == 2
    assert ("serve.max_body_bytes: input should be greater than or equal to 1024"
            in capsys.readouterr().err)
    with pytest.raises(KorlmError, match="max-body-bytes must be at least 1024, got 100"):
        ServeSettings(max_body_bytes=100)
    (tmp_path / "d.yaml").write_text("serve:\n  max_item: 3\n", encoding="utf-8")
    assert main(["serve", str(tmp_path / "model"), "--config", str(tmp_path / "d.yaml")]) == 2
    assert "serve.max_item" in capsys.readouterr().err


POISON = "<<poison: handed to the tokenizer as a lone surrogate>>"


class PoisonedModel:
    """The real fine-tuned model, except that ``POISON`` reaches its real tokenizer as a
    lone surrogate, so the real model call fails for the whole batch (the tokenizers
    library's TypeError), as a batch holding a lone surrogate did before validation
    stopped them. Everything else (``untokenized``, labels, ...) is the real model's."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def classify(self, texts, texts_b=None):
        return self.model.classify(["\ud800" if t == POISON else t for t in texts], texts_b)


@pytest.fixture(scope="module")
def poison_server(models_dir):
    """The classification model behind a real uvicorn server on loopback, poisonable."""
    from korlm.evaluation.finetune import load_finetuned

    loaded = {}

    def loader(path):
        loaded["model"] = PoisonedModel(load_finetuned(path))
        return loaded["model"]

    app = create_app(str(models_dir["classify"]), loader=loader, settings=ServeSettings(
        max_batch_size=16, max_wait_ms=100, max_items=8, max_chars=200, max_body_bytes=8192))
    with _live_server(app) as base:
        yield base, loaded["model"].model


def _metrics_delta(base: str, before: dict) -> dict:
    import httpx

    after = httpx.get(f"{base}/metrics.json").json()
    return {k: after[k] - before[k] for k in before
            if isinstance(before[k], int) and k != "largest_batch"}


def _ascii_json(items: list[dict]) -> dict:
    return {"content": json.dumps({"items": items}).encode("ascii"),
            "headers": {"content-type": "application/json"}}


def _assert_same_predictions(got: dict, want: dict) -> None:
    assert got["label"] == want["label"]
    for k, v in want["probabilities"].items():
        assert got["probabilities"][k] == pytest.approx(v, abs=1e-5)


def test_a_poisoned_request_fails_alone_on_a_real_server(poison_server):
    """Eight concurrent requests gathered into one batch, one of them poisoned past
    validation (see PoisonedModel): the real model call fails, the batch is split, and the
    seven others get their own correct predictions; the poisoned one gets a 422 naming its
    item, on one line."""
    import httpx

    base, model = poison_server
    reviews = _reviews(16)
    requests = [reviews[i * 2:i * 2 + 2] for i in range(7)]
    requests.insert(4, [reviews[14], POISON])
    before = httpx.get(f"{base}/metrics.json").json()

    async def drive():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            return await asyncio.gather(*[
                client.post("/v1/classify", json={"items": [{"text": t} for t in texts]})
                for texts in requests])

    responses = asyncio.run(drive())
    delta = _metrics_delta(base, before)
    poisoned = responses.pop(4)
    requests.pop(4)
    assert poisoned.status_code == 422, poisoned.text
    message = poisoned.json()["message"]
    assert message.startswith("items.1: the model fails on this item alone (TypeError: "), message
    assert "\n" not in message and "Traceback" not in poisoned.text
    assert [r.status_code for r in responses] == [200] * 7
    expected = model.classify([t for texts in requests for t in texts])
    got = [res for r in responses for res in r.json()["results"]]
    for g, w in zip(got, expected, strict=True):
        _assert_same_predictions(g, w)
    # the poison shared a failing call with valid items (not alone from the start), and
    # only its item failed
    assert delta["failed_model_calls"] >= 2 and delta["isolation_calls"] >= 2, delta
    assert delta["failed_items"] == 1 and delta["failed_requests"] == 0, delta


POISON_KINDS = {  # text, what the 422 says after "items.N"
    "lone surrogate": ("좋\ud800아요", ".text: contains a lone surrogate (U+D800 at character 1)"),
    "NUL only": ("\x00\x00\x00", ".text: has nothing to encode"),
    "control only": ("\x01\x02\x1b\x7f", ".text: has nothing to encode"),
    "format only": ("\u200b\u200d\ufeff", ".text: has nothing to encode"),
    "whitespace only": (" \u3000\t", ".text: must not be empty or only whitespace"),
    "no token": ("\ufffd\ue000", ".text: encodes to no token with this model's tokenizer"),
    "model failure": (POISON, ": the model fails on this item alone (TypeError"),
}


def test_concurrent_load_with_ten_percent_poison_fails_no_valid_request(poison_server):
    """300 requests from 16 concurrent clients on loopback; every tenth carries one poison
    item (the POISON_KINDS in turn) at a random place among 1-3 items. Not one valid
    request fails (each gets its own texts' predictions), every poisoned one gets a 422
    naming its item, and no request gets a 5xx."""
    import httpx

    base, model = poison_server
    rng = random.Random(0)
    reviews = _reviews(200)
    kinds = list(POISON_KINDS)
    plan = []  # (texts, (kind, index) or None)
    for n in range(300):
        texts = [rng.choice(reviews) for _ in range(rng.randint(1, 3))]
        poison = None
        if n % 10 == 5:
            kind, index = kinds[(n // 10) % len(kinds)], rng.randrange(len(texts))
            texts[index] = POISON_KINDS[kind][0]
            poison = (kind, index)
        plan.append((texts, poison))
    before = httpx.get(f"{base}/metrics.json").json()

    async def drive():
        todo, responses = iter(range(len(plan))), [None] * len(plan)
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     limits=httpx.Limits(max_connections=16)) as client:
            async def client_loop():
                for n in todo:
                    responses[n] = await client.post(
                        "/v1/classify", **_ascii_json([{"text": t} for t in plan[n][0]]))
            await asyncio.gather(*[client_loop() for _ in range(16)])
        return responses

    started = time.perf_counter()
    responses = asyncio.run(drive())
    elapsed = time.perf_counter() - started
    delta = _metrics_delta(base, before)
    valid = sorted({t for texts, poison in plan if poison is None for t in texts})
    expected = dict(zip(valid, model.classify(valid), strict=True))
    failed_valid, poison_answers = [], []
    for (texts, poison), r in zip(plan, responses, strict=True):
        if poison is None:
            if r.status_code != 200:
                failed_valid.append(f"{r.status_code}: {r.text[:200]}")
                continue
            for text, got in zip(texts, r.json()["results"], strict=True):
                _assert_same_predictions(got, expected[text])
        else:
            kind, index = poison
            message = r.json()["message"]
            poison_answers.append(kind)
            assert r.status_code == 422 and "\n" not in message, (kind, r.status_code, message)
            assert message.startswith(f"items.{index}{POISON_KINDS[kind][1]}"), (kind, message)
    assert failed_valid == [], failed_valid[:3]
    assert len(poison_answers) == 30 and set(poison_answers) == set(kinds)
    n_model_poison = poison_answers.count("model failure")
    assert delta["failed_requests"] == 0, delta
    assert delta["rejected_requests"] == 30 and delta["failed_items"] == n_model_poison, delta
    assert delta["requests"] == 270 + n_model_poison, delta  # the rest never reached the queue
    print(f"300 requests (30 poisoned) in {elapsed:.1f} s: {delta}")


def _raw_http(base: str, head: bytes, body_parts=(), timeout: float = 30) -> tuple[bytes, dict]:
    """Send ``head`` and ``body_parts`` on a plain socket; the answer's status line and
    headers, and its JSON body (read up to its Content-Length)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        status, _, body = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in status.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += s.recv(65536)
    return status, json.loads(body)


def test_max_body_bytes_on_the_wire(poison_server):
    """--max-body-bytes on a real server (8192 here): a Content-Length over it answers 413
    although none of the body is ever sent (the server does not wait for it); a chunked
    body, which never ends here, answers 413 once the bytes read pass the cap; the server
    serves on."""
    import httpx

    base, _ = poison_server
    head = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    status, body = _raw_http(base, head + b"Content-Length: 1000000000000\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert body["message"] == ("the request body is 1000000000000 bytes (Content-Length); "
                               "the limit is 8192 bytes (--max-body-bytes)")
    chunks = [b"3e8\r\n" + b"x" * 1000 + b"\r\n"] * 12  # 12,000 bytes, no last chunk
    status, body = _raw_http(base, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status.startswith(b"HTTP/1.1 413 "), status
    assert body["message"].startswith("the request body is at least ") and body[
        "message"].endswith("bytes; the limit is 8192 bytes (--max-body-bytes)"), body
    r = httpx.post(f"{base}/v1/classify", json={"items": [{"text": "좋다"}] * 8})
    assert r.status_code == 200, r.text  # a body under the cap


def _scrape(base: str) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` parsed by prometheus_client's own parser: (sample name, sorted
    labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_prometheus_metrics_count_requests_items_batches_and_errors(poison_server):
    """After two 200s (3 and 1 items), a 422, a 413 and a 404 on the real server, the
    Prometheus exposition (parsed by prometheus_client) has moved by exactly that:
    responses by endpoint and status (the 404's path folded into ``other``), one latency
    observation per response, the items-per-request histogram's buckets and the model's
    items; /metrics.json still answers JSON."""
    import httpx

    base, _ = poison_server
    before = _scrape(base)
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/v1/classify", json={"items": [{"text": "좋다"}] * 3}).status_code == 200
        assert client.post("/v1/classify", json={"items": [{"text": "별로"}]}).status_code == 200
        assert client.post("/v1/classify", json={"items": [{"text": ""}]}).status_code == 422
        big = {"items": [{"text": "가" * 100}] * 8, "pad": "x" * 9000}
        assert client.post("/v1/classify", json=big).status_code == 413
        assert client.get("/no/such/path/42").status_code == 404
        assert "items" in client.get("/metrics.json").json()
    after = _scrape(base)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    responses = "korlm_serve_http_responses_total"
    assert delta(responses, endpoint="/v1/classify", status="200") == 2
    assert delta(responses, endpoint="/v1/classify", status="422") == 1
    assert delta(responses, endpoint="/v1/classify", status="413") == 1
    assert delta(responses, endpoint="other", status="404") == 1
    assert delta(responses, endpoint="/metrics.json", status="200") == 1
    assert not [k for k in after if k[0] == responses and "/no/such" in str(k[1])]
    latency = "korlm_serve_http_request_duration_seconds"
    assert delta(f"{latency}_count", endpoint="/v1/classify") == 4
    assert delta(f"{latency}_sum", endpoint="/v1/classify") > 0
    assert delta(f"{latency}_bucket", endpoint="/v1/classify", le="+Inf") == 4
    # items per request: buckets are cumulative (1 item: le=1 and up; 3 items: le=4 and up)
    items = "korlm_serve_request_items"
    assert delta(f"{items}_count") == 2 and delta(f"{items}_sum") == 4
    assert [delta(f"{items}_bucket", le=le) for le in ("1.0", "2.0", "4.0", "+Inf")] == [1, 1, 2, 2]
    assert delta("korlm_serve_requests_total") == 2
    assert delta("korlm_serve_items_total") == 4
    assert delta("korlm_serve_rejected_requests_total") == 2  # the 422 and the 413
    batches = delta("korlm_serve_batch_items_count")
    assert 1 <= batches <= 2 and delta("korlm_serve_batch_items_sum") == 4
    assert after[("korlm_serve_model_loaded", ())] == 1


def test_fuzzing_the_api_from_its_openapi_schema_finds_no_server_error(poison_server):
    """Property-based fuzzing with schemathesis from the live server's own /openapi.json:
    bodies that fit the schema and bodies that break it, for every operation and more of
    them for the one the model serves (the other /v1 endpoints answer 409). No answer is
    a 5xx, every answer conforms to the documented status codes, content types and
    response schemas, and every error carries a one-line message. (An injected bug, a
    ZeroDivisionError for text with U+001F, was found this way in 150 examples.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    base, _ = poison_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    served = schema.include(path="/v1/classify")
    strategy = st.one_of(*[s.as_strategy(mode) for s in (schema, served)
                           for mode in (schemathesis.GenerationMode.POSITIVE,
                                        schemathesis.GenerationMode.NEGATIVE)])
    seen: dict[tuple[str, int], int] = {}

    @settings(max_examples=150, deadline=10_000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case):
        response = case.call(base_url=base, timeout=30)
        key = (case.operation.label, response.status_code)
        seen[key] = seen.get(key, 0) + 1
        case.validate_response(response, checks=[
            not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance])
        if response.status_code >= 400:
            message = response.json()["message"]
            assert message and "\n" not in message, message

    fuzz()
    assert not [key for key in seen if key[1] >= 500], seen
    # the fuzzer reached the model and the validation both
    assert seen.get(("POST /v1/classify", 200)) and seen.get(("POST /v1/classify", 422)), seen
