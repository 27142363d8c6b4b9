"""`korlm serve`: real fine-tuned model directories (a tiny random-init BERT fine-tuned for
one epoch with `korlm.finetune.finetune`) behind the FastAPI app, through FastAPI's
TestClient and a real uvicorn server on a free loopback port.

The one test double is `EchoModel` in `test_batcher_keeps_every_result_with_its_request`:
its predictions are its inputs, so any mix-up between requests shows exactly."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from korlm.errors import KorlmError
from korlm.serve import MicroBatcher, ServeCounters, ServeSettings, create_app
from tests.test_evaluate import _write_user_tasks, write_nsmc_slice
from tests.test_pretrain import build_tokenizer

FT = dict(max_train_examples=48, max_eval_examples=24, epochs=1, batch_size=16, max_seq_length=32,
          seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random-init BERT checkpoint, its tokenizer and the task data."""
    from tokenizers import Tokenizer

    from korlm import models

    root = tmp_path_factory.mktemp("serve")
    tokenizer_dir = build_tokenizer(root / "tokenizer", num_sentences=300, vocab_size=600)
    vocab_size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    task = models.build_masked_lm("bert", "tiny", vocab_size, 32)
    models.save_checkpoint(task, str(root / "checkpoint"), {
        "model": "bert", "size": "tiny", "vocab_size": vocab_size, "max_seq_length": 32, "step": 0})
    nsmc = write_nsmc_slice(root / "data" / "nsmc", num_train=80, num_test=24)
    return root, tokenizer_dir, nsmc, _write_user_tasks(root / "tasks")


@pytest.fixture(scope="module")
def models_dir(base):
    """A classification (NSMC slice) and a regression (sentence pairs, 0-5) model directory
    fine-tuned for one epoch with `korlm finetune`."""
    from korlm.finetune import finetune

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
    from korlm.finetune import load_finetuned

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
])
def test_invalid_requests_get_422_with_a_clear_message(classify_client, body, message):
    before = classify_client.get("/metrics").json()
    r = classify_client.post("/v1/classify", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"], r.json()
    after = classify_client.get("/metrics").json()
    assert after["rejected_requests"] == before["rejected_requests"] + 1
    assert after["model_calls"] == before["model_calls"]  # nothing reached the model


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
            "/metrics"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/v1/classify"]["post"]
    assert classify_client.get("/docs").status_code == 200


def test_similarity_endpoint_clips_and_thresholds(models_dir):
    from fastapi.testclient import TestClient

    from korlm.finetune import load_finetuned

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


def test_concurrent_requests_are_batched_on_a_real_server(models_dir):
    """A real uvicorn server on loopback: 24 concurrent requests are served by fewer
    model calls, and each gets the predictions for its own texts."""
    import httpx
    import uvicorn

    from korlm.finetune import load_finetuned

    port = _free_port()
    app = create_app(str(models_dir["classify"]),
                     settings=ServeSettings(max_batch_size=16, max_wait_ms=200))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        reviews = [line.split("\t")[1] for line in
                   (Path(__file__).resolve().parents[1] / "data" / "sample" / "eval" / "nsmc" /
                    "ratings_test.txt").read_text(encoding="utf-8").splitlines()[1:200]
                   if line.split("\t")[1].strip()][:48]
        requests = [reviews[i * 2:i * 2 + 2] for i in range(24)]

        async def drive():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(*[
                    client.post("/v1/classify", json={"items": [{"text": t} for t in texts]})
                    for texts in requests])

        responses = asyncio.run(drive())
        assert [r.status_code for r in responses] == [200] * 24
        counters = httpx.get(f"{base}/metrics").json()
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
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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


def test_a_failing_model_call_fails_only_its_batch():
    calls = []

    def predict(inputs):
        calls.append(inputs)
        if any(a == "boom" for (a,) in inputs):
            raise ValueError("bad input")
        return [a.upper() for (a,) in inputs]

    async def main():
        batcher = MicroBatcher(predict, max_batch_size=4, max_wait_ms=0, counters=ServeCounters())
        batcher.start()
        with pytest.raises(ValueError, match="bad input"):
            await batcher.submit([("boom",)])
        ok = await batcher.submit([("ok",)])
        await batcher.stop()
        return ok

    assert asyncio.run(main()) == ["OK"]


def test_readyz_is_503_until_the_model_is_loaded(models_dir):
    from fastapi.testclient import TestClient

    from korlm.finetune import load_finetuned

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

    from korlm.finetune import finetune, load_finetuned

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
    (tmp_path / "d.yaml").write_text("serve:\n  max_item: 3\n", encoding="utf-8")
    assert main(["serve", str(tmp_path / "model"), "--config", str(tmp_path / "d.yaml")]) == 2
    assert "serve.max_item" in capsys.readouterr().err
