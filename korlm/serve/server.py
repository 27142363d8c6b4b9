"""``korlm serve MODEL_DIR``: a REST API over a fine-tuned model directory.

The directory is the output of ``korlm finetune`` (``korlm.evaluation.finetune.load_finetuned``
reads it). One endpoint answers per task type of the loaded model:

- ``POST /v1/similarity``  regression models (sentence pairs): score clipped to 0-5
  and ``similar`` = score >= 3.0 (the KorSTS / KLUE-STS binary label);
- ``POST /v1/classify``    classification (``text``) and pair classification
  (``text`` + ``text_b``): label and probabilities;
- ``POST /v1/answer``      extractive QA (``question`` + ``context``): the answer span
  with character offsets into the context;
- ``POST /v1/tag``         token classification (``text``): the entities, each with
  ``start``/``end`` character offsets into the text as sent, ``label``, ``text``, ``score``.

A request to another endpoint answers 409 naming the model's task type. Every body is
``{"items": [...]}``. Bad input never reaches the model and answers with one line in
``message`` (next to a ``detail`` list or string), never a traceback:

- 413: a body over ``max_body_bytes`` (``--max-body-bytes``, default 1 MiB), answered as
  soon as ``Content-Length`` says so (the body is not read) or, for a chunked body, as
  soon as the bytes read pass the cap;
- 422: a content type other than JSON (the message names the one received and
  ``application/json``), a body that is not UTF-8 or not JSON, no items or more than
  ``max_items``, a missing or unknown field, non-string text, text over ``max_chars``,
  and text the tokenizer cannot encode, named by item and field (``items.3.text: ...``):
  a lone surrogate (JSON ``"\\ud800"``), text made only of whitespace, control or format
  characters (NUL, U+200B, ...) after the tokenizer's NFC, and text that the loaded
  model's own tokenizer turns into no token at all (U+FFFD or private-use characters
  for a WordPiece vocab: :meth:`korlm.evaluation.finetune.FineTunedModel.untokenized`).

Request batching: every item of every request goes on one asyncio queue; one worker
takes up to ``max_batch_size`` items (those that queued while the previous call ran;
``max_wait_ms`` > 0 also waits that long after the first for more), calls the model once
for all of them in a thread (so the event loop keeps accepting requests), and hands each
request its own results. One client's input never fails another's request: if a model
call raises, the batch is split in halves and each half called again, down to single
items, so every item that the model can answer is answered, and only a request with an
item that fails on its own gets an error: 422 naming the item when the model answers
other input (the rest of the batch, or else a fixed probe text), 500 with one line when
it answers nothing (the model, not the input, is broken). ``GET /metrics`` answers in
the Prometheus text format (a registry per app: :mod:`korlm.serve.metrics`): responses by
endpoint and status, latency, items per request and per model call, model calls (and
those made to isolate a failure), rejections, queued items; ``GET /metrics.json`` answers
the same counters as JSON (what ``benchmarks/serve_load.py`` reads).
``/healthz`` answers as soon as the process is up; ``/readyz`` answers 503 while the
model loads (in a thread, after startup) and 200 with the model's task, type, labels and
``max_seq_length`` once it is loaded.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, which
# name classes local to create_app.
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from korlm.config import ServeSection
from korlm.errors import KorlmError
from korlm.serve.metrics import Instrument, ServeMetrics

# uvicorn configures this logger: the model-load messages show in the server log
log = logging.getLogger("uvicorn.error")

SIMILAR_THRESHOLD = 3.0
SCORE_RANGE = (0.0, 5.0)
# endpoint -> the task types it serves
ENDPOINT_TASK_TYPES = {
    "similarity": ("regression",),
    "classify": ("classification", "pair-classification"),
    "answer": ("extractive-qa",),
    "tag": ("token-classification",),
}
TASK_TYPE_ENDPOINT = {t: e for e, types in ENDPOINT_TASK_TYPES.items() for t in types}
# the serve config section's defaults, so the library and `korlm serve` cannot drift apart
_DEFAULTS = ServeSection()


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = _DEFAULTS.max_batch_size
    # 0: no waiting; items that queue while a model call runs form the next batch
    # (measured better than 5 ms at every concurrency: benchmarks/README.md, run 5)
    max_wait_ms: float = _DEFAULTS.max_wait_ms
    max_items: int = _DEFAULTS.max_items
    max_chars: int = _DEFAULTS.max_chars
    max_body_bytes: int = _DEFAULTS.max_body_bytes

    def __post_init__(self) -> None:
        for name, least in (("max_batch_size", 1), ("max_items", 1), ("max_chars", 1),
                            ("max_body_bytes", 1024)):
            if getattr(self, name) < least:
                raise KorlmError(f"{name.replace('_', '-')} must be at least {least}, "
                                 f"got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise KorlmError(f"max-wait-ms must be 0 or more, got {self.max_wait_ms}")


@dataclasses.dataclass
class ServeCounters:
    requests: int = 0
    items: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    rejected_requests: int = 0  # 4xx on /v1 (validation, size, content type, task type)
    failed_requests: int = 0  # 5xx
    failed_model_calls: int = 0  # calls that raised (each triggers a split)
    isolation_calls: int = 0  # calls on parts of a failed batch, and probe calls
    failed_items: int = 0  # items that failed on their own after the split

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        batches = self.model_calls - self.isolation_calls
        out["mean_batch_items"] = round(self.items / batches, 3) if batches else None
        return out


@dataclasses.dataclass
class _Pending:
    """One request's items waiting on the queue; ``results`` is filled slot by slot."""

    inputs: list[tuple]
    future: asyncio.Future
    results: list[Any] = dataclasses.field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.inputs)
        self.remaining = len(self.inputs)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (TensorFlow's
    errors span many lines)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


class ModelCallError(Exception):
    """The model failed on item ``index`` of a request even when called on it alone.
    ``input_fault``: the model answered other input meanwhile (the rest of the batch, or
    the probe), so the item is to blame (422); otherwise the model is (500)."""

    def __init__(self, index: int, cause: BaseException, input_fault: bool):
        super().__init__(one_line(cause))
        self.index, self.cause, self.input_fault = index, cause, input_fault


class MicroBatcher:
    """Gathers the items of concurrent requests into model calls of up to
    ``max_batch_size`` items. ``predict(inputs)`` takes a list of input tuples and
    returns one result per tuple, in order; it runs in a worker thread, one call at a
    time.

    A call that raises (or returns the wrong number of results) is split in halves and
    each half called again, down to single items: every item that the model answers is
    answered, and a request is failed (:class:`ModelCallError`) only for an item that
    fails alone. With k failing items among n this costs about 2k·log2(n/k) extra calls.
    When nothing of the batch was answered, ``probe`` (an input known to be valid; None:
    no probe) is called once to tell a bad input (the probe is answered) from a broken
    model (it fails too)."""

    def __init__(self, predict: Callable[[list[tuple]], list[Any]], *, max_batch_size: int,
                 max_wait_ms: float, counters: ServeCounters, probe: tuple | None = None,
                 on_batch: Callable[[int], None] | None = None):
        self.predict = predict
        self.on_batch = on_batch  # called with the size of every gathered batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.counters = counters
        self.probe = probe
        self.queue: asyncio.Queue[tuple[_Pending, int]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, inputs: list[tuple]) -> list[Any]:
        pending = _Pending(inputs, asyncio.get_running_loop().create_future())
        for i in range(len(inputs)):
            self.queue.put_nowait((pending, i))
        return await pending.future

    async def _gather(self) -> list[tuple[_Pending, int]]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout=left))
            except TimeoutError:
                break
        return batch

    async def _call(self, batch: list[tuple[_Pending, int]],
                    failures: list[tuple[_Pending, int, BaseException]], *, part: bool) -> int:
        """Run the model on ``batch`` and hand out its results; on an error, split it.
        Items failing alone go to ``failures``. Returns the number of items answered."""
        # a request whose client went away (future cancelled) is not computed
        batch = [(p, i) for p, i in batch if not p.future.done()]
        if not batch:
            return 0
        self.counters.model_calls += 1
        self.counters.isolation_calls += part
        try:
            outputs = await asyncio.to_thread(self.predict, [p.inputs[i] for p, i in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model returned {len(outputs)} results for "
                                   f"{len(batch)} inputs")
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per request
            self.counters.failed_model_calls += 1
            if len(batch) == 1:
                failures.append((*batch[0], exc))
                return 0
            log.warning("model call on %d items failed (%s); splitting the batch",
                        len(batch), one_line(exc))
            half = len(batch) // 2
            return (await self._call(batch[:half], failures, part=True)
                    + await self._call(batch[half:], failures, part=True))
        for (p, i), out in zip(batch, outputs, strict=True):
            if p.future.done():
                continue
            p.results[i] = out
            p.remaining -= 1
            if p.remaining == 0:
                p.future.set_result(p.results)
        return len(batch)

    async def _model_answers_probe(self) -> bool:
        if self.probe is None:
            return False
        self.counters.model_calls += 1
        self.counters.isolation_calls += 1
        try:
            return len(await asyncio.to_thread(self.predict, [self.probe])) == 1
        except Exception as exc:  # noqa: BLE001 - the answer is the point
            self.counters.failed_model_calls += 1
            log.error("the model fails on the probe input too: %s", one_line(exc))
            return False

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            batch = [(p, i) for p, i in batch if not p.future.done()]
            if not batch:
                continue
            self.counters.items += len(batch)
            self.counters.largest_batch = max(self.counters.largest_batch, len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            failures: list[tuple[_Pending, int, BaseException]] = []
            try:
                answered = await self._call(batch, failures, part=False)
                input_fault = bool(failures) and (answered > 0 or await self._model_answers_probe())
            except asyncio.CancelledError:
                for p, _ in batch:
                    if not p.future.done():
                        p.future.cancel()
                raise
            for p, i, exc in failures:
                self.counters.failed_items += 1
                if input_fault:
                    log.warning("the model fails on one item alone (its request answers 422): %s",
                                one_line(exc))
                else:
                    log.error("model call failed", exc_info=exc)
                if not p.future.done():
                    p.future.set_exception(ModelCallError(i, exc, input_fault))


def model_info(model: Any) -> dict[str, Any]:
    return {"task": model.task_name, "task_type": model.task_type,
            "labels": list(model.label_names) if model.label_names is not None else None,
            "label_descriptions": getattr(model, "label_descriptions", None),
            "max_seq_length": model.max_seq_length,
            "endpoint": f"/v1/{TASK_TYPE_ENDPOINT.get(model.task_type, '?')}"}


def predict_fn(model: Any) -> Callable[[list[tuple]], list[Any]]:
    """The batched model call for the model's task type, over input tuples."""
    task_type = model.task_type
    if task_type == "regression":
        def predict(inputs: list[tuple]) -> list[Any]:
            return [float(s) for s in model.regress([a for a, _ in inputs], [b for _, b in inputs])]
    elif task_type == "classification":
        def predict(inputs: list[tuple]) -> list[Any]:
            return model.classify([t for (t,) in inputs])
    elif task_type == "pair-classification":
        def predict(inputs: list[tuple]) -> list[Any]:
            return model.classify([a for a, _ in inputs], [b for _, b in inputs])
    elif task_type == "extractive-qa":
        def predict(inputs: list[tuple]) -> list[Any]:
            return model.answer([q for q, _ in inputs], [c for _, c in inputs])
    elif task_type == "token-classification":
        def predict(inputs: list[tuple]) -> list[Any]:
            return [{"entities": found} for found in model.tag([t for (t,) in inputs])]
    else:
        raise KorlmError(f"the model's task type {task_type!r} has no endpoint; "
                         f"served types: {', '.join(TASK_TYPE_ENDPOINT)}")
    return predict


def probe_input(task_type: str) -> tuple:
    """A plain Korean input for the task type, which any model of it answers: the
    batcher's evidence that the model works when every item of a batch failed."""
    text, other = "오늘 날씨가 좋네요", "내일은 비가 온대요"
    return {"classification": (text,), "token-classification": (text,),
            "extractive-qa": ("날씨는?", text)}.get(task_type, (text, other))


# lone surrogates: JSON "\ud800" decodes to them; they cannot be encoded as UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOTHING_TO_ENCODE = ("Cc", "Cf")  # control, format (NUL, U+200B, U+FEFF, bidi marks)


def _codepoints(text: str, limit: int = 3) -> str:
    seen = list(dict.fromkeys(text))
    shown = ", ".join(f"U+{ord(c):04X}" for c in seen[:limit])
    return shown + (", ..." if len(seen) > limit else "")


def text_problem(value: str, max_chars: int) -> str | None:
    """Why ``value`` cannot be served (None when it can), without the loaded model:
    empty or whitespace, a lone surrogate, over ``max_chars``, or made only of control,
    format and whitespace characters after NFC (the tokenizers' normalization), which
    every korlm tokenizer encodes to nothing or to unknown tokens."""
    if not value.strip():
        return "must not be empty or only whitespace"
    if match := _SURROGATE.search(value):
        return (f"contains a lone surrogate (U+{ord(match.group()):04X} at character "
                f"{match.start()}): not valid Unicode text")
    if len(value) > max_chars:
        return f"is {len(value)} characters long; the limit is {max_chars} (--max-chars)"
    normalized = unicodedata.normalize("NFC", value)
    if all(c.isspace() or unicodedata.category(c) in _NOTHING_TO_ENCODE for c in normalized):
        return ("has nothing to encode: only control, format or whitespace characters "
                f"({_codepoints(normalized.strip())})")
    return None


def _request_models(max_chars: int, max_items: int) -> dict[str, Any]:
    """Pydantic request bodies with the server's limits built in."""
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, create_model

    def servable(value: str) -> str:
        if problem := text_problem(value, max_chars):
            raise ValueError(problem)
        return value

    Text = Annotated[StrictStr, AfterValidator(servable),
                     Field(description=f"1 to {max_chars} characters of text, not only "
                                       "whitespace, control or format characters",
                           json_schema_extra={"minLength": 1, "maxLength": max_chars})]

    def items_field(item: type) -> Any:
        return Annotated[list[item], Field(min_length=1, max_length=max_items,
                                           description=f"1 to {max_items} items")]

    strict = ConfigDict(extra="forbid")

    class SimilarityItem(BaseModel):
        model_config = strict
        text_a: Text
        text_b: Text

    class ClassifyItem(BaseModel):
        model_config = strict
        text: Text
        text_b: Text | None = Field(None, description="second text, for pair-classification models")

    class AnswerItem(BaseModel):
        model_config = strict
        question: Text
        context: Text

    class TagItem(BaseModel):
        model_config = strict
        text: Text

    class TagRequest(BaseModel):
        model_config = strict
        items: items_field(TagItem)

    class SimilarityRequest(BaseModel):
        model_config = strict
        items: items_field(SimilarityItem)

    class ClassifyRequest(BaseModel):
        model_config = strict
        items: items_field(ClassifyItem)

    class AnswerRequest(BaseModel):
        model_config = strict
        items: items_field(AnswerItem)

    class SimilarityResult(BaseModel):
        score: float = Field(description=f"predicted similarity clipped to {SCORE_RANGE}")
        similar: bool = Field(description=f"score >= {SIMILAR_THRESHOLD}")

    class ClassifyResult(BaseModel):
        label: str
        label_id: int
        description: str | None = Field(
            None, description="what the label means when it is a bare code (NSMC 1: positive)")
        probabilities: dict[str, float]

    class AnswerResult(BaseModel):
        answer: str
        start: int = Field(description="character offset of the answer in the context")
        end: int = Field(description="character offset just past the answer")
        score: float

    class Entity(BaseModel):
        start: int = Field(description="character offset of the entity in the text as sent")
        end: int = Field(description="character offset just past the entity")
        label: str = Field(description="the entity type (PS, LC, ...)")
        text: str = Field(description="text[start:end]")
        score: float = Field(description="mean probability of the entity's predicted tags")

    class TagResult(BaseModel):
        entities: list[Entity]

    def response(result: type, name: str) -> type:
        return create_model(name, model=(str, ...), results=(list[result], ...))

    return {"similarity": (SimilarityRequest, response(SimilarityResult, "SimilarityResponse")),
            "classify": (ClassifyRequest, response(ClassifyResult, "ClassifyResponse")),
            "answer": (AnswerRequest, response(AnswerResult, "AnswerResponse")),
            "tag": (TagRequest, response(TagResult, "TagResponse"))}


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(value: Any, limit: int = 80) -> str:
    """``value`` as text safe to echo in a JSON error: control characters and lone
    surrogates (which cannot be encoded as UTF-8) escaped, at most ``limit`` characters."""
    text = _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error_message(errors: list[dict], shown: int = 5) -> str:
    """FastAPI's validation errors as one line: ``items.0.text: String should ...``
    (the first ``shown``, then how many more)."""
    parts = []
    for err in errors[:shown]:
        loc = ".".join(printable(x, 40) for x in err.get("loc", ()) if x != "body") or "body"
        msg = printable(err.get("msg", "invalid"), 300)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err.get("type") == "json_invalid":  # loc: ("body", character offset)
            loc, msg = "body", (f"not valid JSON: {printable((err.get('ctx') or {}).get('error'))}"
                                f" (character {err.get('loc', ('', '?'))[-1]})")
        if err.get("type") == "too_long" and loc == "items":
            msg += " (--max-items)"
        parts.append(f"{loc}: {msg}")
    if len(errors) > shown:
        parts.append(f"and {len(errors) - shown} more errors")
    return "; ".join(parts)


class BodyLimit:
    """ASGI middleware: a request body over ``max_body_bytes`` answers 413 with a one-line
    JSON message, at once when ``Content-Length`` says so (none of it read here) and, for
    a chunked body, as soon as the bytes read pass the cap. The server never holds more
    than the cap: what the client still sends is dropped by the HTTP layer as it arrives
    (closing instead would reset a client still sending, which then never sees the 413).
    A body within the cap is read here and handed on. (Starlette's own body limit
    answers a Content-Length over it in plain text.)"""

    def __init__(self, app: Any, *, max_body_bytes: int, counters: ServeCounters):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.counters = counters

    async def _too_large(self, scope: dict, receive: Any, send: Any, size: str) -> None:
        from starlette.responses import JSONResponse

        if scope["path"].startswith("/v1/"):
            self.counters.rejected_requests += 1
        message = (f"the request body is {size}; the limit is {self.max_body_bytes} bytes "
                   "(--max-body-bytes)")
        await JSONResponse({"message": message, "detail": message},
                           status_code=413)(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send, f"{int(declared)} bytes (Content-Length)")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending all of its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send, f"at least {size} bytes")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: waits for the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(model_dir: str | None = None, *, settings: ServeSettings | None = None,
               loader: Callable[[str], Any] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None):
    """The FastAPI app. The model is loaded from ``model_dir`` with ``loader`` (default
    ``korlm.evaluation.finetune.load_finetuned``) in a thread once the app starts."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class PrometheusResponse(Response):
        media_type = CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus version scrapes

    settings = settings or ServeSettings()
    if loader is None:
        from korlm.evaluation.finetune import load_finetuned

        def loader(path: str) -> Any:  # one predict call per gathered batch
            return load_finetuned(path, batch_size=max(32, settings.max_batch_size))
    bodies = _request_models(settings.max_chars, settings.max_items)
    state: dict[str, Any] = {"model": None, "info": None, "error": None, "batcher": None,
                             "loaded_at": None}
    counters = ServeCounters()
    metrics = ServeMetrics(counters, state, max_items=settings.max_items,
                           max_batch_size=settings.max_batch_size)
    started = time.time()

    def load_model() -> None:
        try:
            model = loader(model_dir)
            info = model_info(model)
            predict = predict_fn(model)
        except BaseException as exc:  # noqa: BLE001 - reported by /readyz and the CLI
            log.error("could not load the model from %s: %s", model_dir, exc)
            state["error"] = one_line(exc, 500)
            if on_load_error is not None:
                on_load_error(exc)
            return
        state["predict"], state["info"] = predict, info
        if state["batcher"] is not None:
            state["batcher"].probe = probe_input(info["task_type"])
        state["model"] = model
        state["loaded_at"] = time.time()
        log.info("model loaded: %s", info)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(lambda inputs: state["predict"](inputs),
                               max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, counters=counters,
                               on_batch=metrics.batch_items.observe)
        batcher.start()
        state["batcher"] = batcher  # before the load, which sets its probe
        loading = asyncio.get_running_loop().run_in_executor(None, load_model)
        try:
            yield
        finally:
            await batcher.stop()
            with contextlib.suppress(Exception):
                await loading

    app = FastAPI(title="korlm serve", version="1",
                  description="Predictions of a korlm fine-tuned model. One of the /v1 "
                              "endpoints serves the loaded model's task type (see /readyz).",
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, counters=counters)
    app.add_middleware(Instrument, metrics=metrics)  # added last: outermost, sees the 413s

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        counters.rejected_requests += 1
        errors = exc.errors()
        return JSONResponse(status_code=422, content={
            "message": _error_message(errors),
            "detail": [{"loc": [x if isinstance(x, int) else printable(x, 40)
                                for x in e.get("loc", ())],
                        "msg": printable(e.get("msg", ""), 300), "type": e.get("type")}
                       for e in errors[:20]]})

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's (404, 405)
    async def http_error(request: Request, exc: StarletteHTTPException):
        status, message = exc.status_code, printable(exc.detail, 600)
        headers = getattr(exc, "headers", None)
        if status == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            cause = exc.__cause__
            status, message = 422, (f"body: not valid UTF-8 (byte 0x{cause.object[cause.start]:02x}"
                                    f" at offset {cause.start}); send JSON as UTF-8")
        elif status == 400 and isinstance(exc.__cause__, RecursionError):
            status, message = 422, "body: JSON nested too deeply to parse"
        if status >= 500:
            counters.failed_requests += 1
        elif request.url.path.startswith("/v1/"):
            counters.rejected_requests += 1
        return JSONResponse(status_code=status, content={"message": message, "detail": message},
                            headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # a bug: one line, logged in full
        counters.failed_requests += 1
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"internal error: {printable(one_line(exc), 300)}"
        return JSONResponse(status_code=500, content={"message": message, "detail": message})

    def serving(endpoint: str) -> Callable[[], Any]:
        async def require() -> Any:
            if state["model"] is None:
                if state["error"]:
                    raise HTTPException(503, f"the model could not be loaded: {state['error']}")
                raise HTTPException(503, "the model is still loading; retry when /readyz "
                                         "answers 200", headers={"Retry-After": "1"})
            task_type = state["info"]["task_type"]
            if task_type not in ENDPOINT_TASK_TYPES[endpoint]:
                raise HTTPException(409, f"this server's model ({state['info']['task']}) has "
                                         f"task type {task_type}: it serves POST "
                                         f"{state['info']['endpoint']}, not /v1/{endpoint}")
            return state["model"]
        return require

    async def json_body(request: Request) -> None:
        """422 naming the content type when a body comes as anything but JSON."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type == "application/json" or (media_type.startswith("application/")
                                                 and media_type.endswith("+json")):
            return
        if not media_type and not await request.body():
            return  # no body at all: "body: Field required"
        received = (f"has content type {printable(media_type, 60)!r}, not JSON" if media_type
                    else "has no content type")
        raise HTTPException(422, f"the body {received}: send it as JSON with "
                                 "Content-Type: application/json")

    async def check_tokens(model: Any, fields: list[tuple[int, str, str]]) -> None:
        """422 for the first text (item, field, text) that the model's tokenizer turns
        into no token (models without ``untokenized``, e.g. test doubles: no check). It
        encodes ~64 characters a text: a few ms for the largest requests, which run in a
        thread so that the event loop is not held up."""
        untokenized = getattr(model, "untokenized", None)
        if untokenized is None:
            return
        texts = [text for _, _, text in fields]
        if sum(min(len(t), 64) for t in texts) <= 1024:
            empty = untokenized(texts)
        else:
            empty = await asyncio.to_thread(untokenized, texts)
        if empty:
            n, field, text = fields[empty[0]]
            raise HTTPException(422, f"items.{n}.{field}: encodes to no token with this model's "
                                     "tokenizer (its normalizer drops every character: "
                                     f"{_codepoints(text)})")

    async def run(model: Any, inputs: list[tuple], fields: tuple[str, ...]) -> list[Any]:
        await check_tokens(model, [(n, field, text) for n, values in enumerate(inputs)
                                   for field, text in zip(fields, values, strict=True)
                                   if text is not None])
        counters.requests += 1
        metrics.request_items.observe(len(inputs))
        try:
            return await state["batcher"].submit(inputs)
        except ModelCallError as exc:
            if exc.input_fault:
                raise HTTPException(422, f"items.{exc.index}: the model fails on this item "
                                         f"alone ({exc}); the model answers other input: "
                                         "resend the request without it") from None
            raise HTTPException(500, f"the model call failed: {exc}") from None

    SimilarityRequest, SimilarityResponse = bodies["similarity"]
    ClassifyRequest, ClassifyResponse = bodies["classify"]
    AnswerRequest, AnswerResponse = bodies["answer"]
    TagRequest, TagResponse = bodies["tag"]

    class ErrorResponse(BaseModel):
        message: str = Field(description="what is wrong, on one line")
        detail: Any = Field(description="FastAPI's list of validation errors (422), else "
                                        "the message again")

    errors_doc = {
        409: {"model": ErrorResponse, "description": "the loaded model has another task type"},
        413: {"model": ErrorResponse, "description": "the body is over --max-body-bytes"},
        422: {"model": ErrorResponse, "description": "invalid input: the message names the "
              "item and field and why (or the content type received and the one expected)"},
        500: {"model": ErrorResponse, "description": "the model fails on any input"},
        503: {"model": ErrorResponse, "description": "the model is not loaded yet"}}

    @app.post("/v1/similarity", dependencies=[Depends(json_body)], response_model=SimilarityResponse, responses=errors_doc,
              summary="Sentence-pair similarity (regression models): score 0-5 and similar")
    async def similarity(body: SimilarityRequest, model: Annotated[Any, Depends(serving("similarity"))]):
        scores = await run(model, [(it.text_a, it.text_b) for it in body.items],
                           ("text_a", "text_b"))
        lo, hi = SCORE_RANGE
        clipped = [min(hi, max(lo, s)) for s in scores]
        return {"model": state["info"]["task"],
                "results": [{"score": s, "similar": s >= SIMILAR_THRESHOLD} for s in clipped]}

    @app.post("/v1/classify", dependencies=[Depends(json_body)], response_model=ClassifyResponse, responses=errors_doc,
              summary="Classification (text) or pair classification (text + text_b)")
    async def classify(body: ClassifyRequest, model: Annotated[Any, Depends(serving("classify"))]):
        pair = state["info"]["task_type"] == "pair-classification"
        for n, it in enumerate(body.items):
            if pair and it.text_b is None:
                raise HTTPException(422, f"items.{n}.text_b: required: the model "
                                         f"({state['info']['task']}) classifies text pairs")
            if not pair and it.text_b is not None:
                raise HTTPException(422, f"items.{n}.text_b: not allowed: the model "
                                         f"({state['info']['task']}) classifies single texts")
        inputs = [(it.text, it.text_b) if pair else (it.text,) for it in body.items]
        fields = ("text", "text_b") if pair else ("text",)
        return {"model": state["info"]["task"], "results": await run(model, inputs, fields)}

    @app.post("/v1/answer", dependencies=[Depends(json_body)], response_model=AnswerResponse, responses=errors_doc,
              summary="Extractive QA: the answer span in the context")
    async def answer(body: AnswerRequest, model: Annotated[Any, Depends(serving("answer"))]):
        results = await run(model, [(it.question, it.context) for it in body.items],
                            ("question", "context"))
        return {"model": state["info"]["task"], "results": results}

    @app.post("/v1/tag", dependencies=[Depends(json_body)], response_model=TagResponse,
              responses=errors_doc, summary="Token classification: the entities of each "
              "text, with character offsets into it")
    async def tag(body: TagRequest, model: Annotated[Any, Depends(serving("tag"))]):
        results = await run(model, [(it.text,) for it in body.items], ("text",))
        return {"model": state["info"]["task"], "results": results}

    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - started, 3)}

    @app.get("/readyz", summary="200 with the model's description once loaded, 503 before")
    async def readyz():
        if state["model"] is None:
            content = {"ready": False, "model_dir": model_dir,
                       "status": "load failed" if state["error"] else "loading"}
            if state["error"]:
                content["error"] = state["error"]
            return JSONResponse(status_code=503, content=content)
        return {"ready": True, "model_dir": model_dir, **state["info"]}

    @app.get("/metrics", summary="Prometheus metrics (text format 0.0.4): responses by "
             "endpoint and status, latency, items per request and per model call",
             response_class=PrometheusResponse)
    async def prometheus_metrics():
        return PrometheusResponse(metrics.exposition())

    @app.get("/metrics.json", summary="Request, item and model-call counters (batching) "
             "and the settings, as JSON")
    async def json_metrics():
        return {**counters.as_dict(), "queued_items": state["batcher"].queue.qsize()
                if state["batcher"] else 0,
                "settings": dataclasses.asdict(settings)}

    metrics.endpoints = {route.path for route in app.routes}
    app.state.korlm = state
    app.state.counters = counters
    app.state.metrics = metrics
    return app


def serve(model_dir: str, *, host: str = _DEFAULTS.host, port: int = _DEFAULTS.port,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted. A model that cannot be loaded stops it and
    raises KorlmError (``/readyz`` answers 503 with the reason meanwhile)."""
    import uvicorn

    settings = settings or ServeSettings()
    if not os.path.isdir(model_dir):
        raise KorlmError(f"{model_dir} is not a directory (expected the output of "
                         "`korlm finetune`)")
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(model_dir, settings=settings, on_load_error=stop)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():
        server.run()
    else:  # signal handlers need the main thread
        asyncio.run(server.serve())
    if failure:
        raise KorlmError(f"could not load the model from {model_dir}: "
                         f"{type(failure[0]).__name__}: {failure[0]}")
    if not server.started:
        raise KorlmError(f"the server did not start on {host}:{port} (is the port in use?)")
