"""``korlm serve MODEL_DIR``: a REST API over a fine-tuned model directory.

The directory is the output of ``korlm finetune`` (``korlm.finetune.load_finetuned``
reads it). One endpoint answers per task type of the loaded model:

- ``POST /v1/similarity``  regression models (sentence pairs): score clipped to 0-5
  and ``similar`` = score >= 3.0 (the KorSTS / KLUE-STS binary label);
- ``POST /v1/classify``    classification (``text``) and pair classification
  (``text`` + ``text_b``): label and probabilities;
- ``POST /v1/answer``      extractive QA (``question`` + ``context``): the answer span
  with character offsets into the context.

A request to another endpoint answers 409 naming the model's task type. Every body is
``{"items": [...]}``; bad input (empty or non-string text, a missing field, text over
``max_chars``, more than ``max_items`` items, no items) answers 422 with a one-line
``message`` next to FastAPI's ``detail`` list.

Request batching: every item of every request goes on one asyncio queue; one worker
takes up to ``max_batch_size`` items (those that queued while the previous call ran;
``max_wait_ms`` > 0 also waits that long after the first for more), calls the model once for all of them in a thread (so the event loop keeps
accepting requests), and hands each request its own results. ``GET /metrics`` counts
requests, items and model calls. ``/healthz`` answers as soon as the process is up;
``/readyz`` answers 503 while the model loads (in a thread, after startup) and 200 with
the model's task, type, labels and ``max_seq_length`` once it is loaded.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, which
# name classes local to create_app.
import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from korlm.config import ServeSection
from korlm.errors import KorlmError

# uvicorn configures this logger: the model-load messages show in the server log
log = logging.getLogger("uvicorn.error")

SIMILAR_THRESHOLD = 3.0
SCORE_RANGE = (0.0, 5.0)
# endpoint -> the task types it serves
ENDPOINT_TASK_TYPES = {
    "similarity": ("regression",),
    "classify": ("classification", "pair-classification"),
    "answer": ("extractive-qa",),
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

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_items", "max_chars"):
            if getattr(self, name) < 1:
                raise KorlmError(f"{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise KorlmError(f"max-wait-ms must be 0 or more, got {self.max_wait_ms}")


@dataclasses.dataclass
class ServeCounters:
    requests: int = 0
    items: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    rejected_requests: int = 0
    failed_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mean_batch_items"] = round(self.items / self.model_calls, 3) if self.model_calls else None
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


class MicroBatcher:
    """Gathers the items of concurrent requests into model calls of up to
    ``max_batch_size`` items. ``predict(inputs)`` takes a list of input tuples and
    returns one result per tuple, in order; it runs in a worker thread, one call at a
    time."""

    def __init__(self, predict: Callable[[list[tuple]], list[Any]], *, max_batch_size: int,
                 max_wait_ms: float, counters: ServeCounters):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.counters = counters
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

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            # a request whose client went away (future cancelled) is not computed
            batch = [(p, i) for p, i in batch if not p.future.done()]
            if not batch:
                continue
            self.counters.model_calls += 1
            self.counters.items += len(batch)
            self.counters.largest_batch = max(self.counters.largest_batch, len(batch))
            try:
                outputs = await asyncio.to_thread(self.predict, [p.inputs[i] for p, i in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(f"the model returned {len(outputs)} results for "
                                       f"{len(batch)} inputs")
            except Exception as exc:  # every request of the batch gets the error
                log.exception("model call failed")
                for p, _ in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for (p, i), out in zip(batch, outputs, strict=True):
                if p.future.done():
                    continue
                p.results[i] = out
                p.remaining -= 1
                if p.remaining == 0:
                    p.future.set_result(p.results)


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
    else:
        raise KorlmError(f"the model's task type {task_type!r} has no endpoint; "
                         f"served types: {', '.join(TASK_TYPE_ENDPOINT)}")
    return predict


def _request_models(max_chars: int, max_items: int) -> dict[str, Any]:
    """Pydantic request bodies with the server's limits built in."""
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, create_model

    def not_blank(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        if len(value) > max_chars:
            raise ValueError(f"is {len(value)} characters long; the limit is {max_chars} "
                             "(--max-chars)")
        return value

    Text = Annotated[StrictStr, AfterValidator(not_blank)]

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

    def response(result: type, name: str) -> type:
        return create_model(name, model=(str, ...), results=(list[result], ...))

    return {"similarity": (SimilarityRequest, response(SimilarityResult, "SimilarityResponse")),
            "classify": (ClassifyRequest, response(ClassifyResult, "ClassifyResponse")),
            "answer": (AnswerRequest, response(AnswerResult, "AnswerResponse"))}


def _error_message(errors: list[dict]) -> str:
    """FastAPI's validation errors as one line: ``items.0.text: String should ...``."""
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err.get("type") == "too_long" and loc == "items":
            msg += " (--max-items)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def create_app(model_dir: str | None = None, *, settings: ServeSettings | None = None,
               loader: Callable[[str], Any] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None):
    """The FastAPI app. The model is loaded from ``model_dir`` with ``loader`` (default
    ``korlm.finetune.load_finetuned``) in a thread once the app starts."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    settings = settings or ServeSettings()
    if loader is None:
        from korlm.finetune import load_finetuned

        def loader(path: str) -> Any:  # one predict call per gathered batch
            return load_finetuned(path, batch_size=max(32, settings.max_batch_size))
    bodies = _request_models(settings.max_chars, settings.max_items)
    state: dict[str, Any] = {"model": None, "info": None, "error": None, "batcher": None,
                             "loaded_at": None}
    counters = ServeCounters()
    started = time.time()

    def load_model() -> None:
        try:
            model = loader(model_dir)
            info = model_info(model)
            predict = predict_fn(model)
        except BaseException as exc:  # noqa: BLE001 - reported by /readyz and the CLI
            log.error("could not load the model from %s: %s", model_dir, exc)
            state["error"] = f"{type(exc).__name__}: {exc}"
            if on_load_error is not None:
                on_load_error(exc)
            return
        state["predict"], state["info"], state["model"] = predict, info, model
        state["loaded_at"] = time.time()
        log.info("model loaded: %s", info)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, load_model)
        batcher = MicroBatcher(lambda inputs: state["predict"](inputs),
                               max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, counters=counters)
        batcher.start()
        state["batcher"] = batcher
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        counters.rejected_requests += 1
        errors = exc.errors()
        return JSONResponse(status_code=422, content={
            "message": _error_message(errors),
            "detail": [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code >= 500:
            counters.failed_requests += 1
        elif request.url.path.startswith("/v1/"):
            counters.rejected_requests += 1
        return JSONResponse(status_code=exc.status_code,
                            content={"message": exc.detail, "detail": exc.detail},
                            headers=getattr(exc, "headers", None))

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

    async def run(inputs: list[tuple]) -> list[Any]:
        counters.requests += 1
        try:
            return await state["batcher"].submit(inputs)
        except Exception as exc:
            raise HTTPException(500, f"the model call failed: {type(exc).__name__}: {exc}") from exc

    SimilarityRequest, SimilarityResponse = bodies["similarity"]
    ClassifyRequest, ClassifyResponse = bodies["classify"]
    AnswerRequest, AnswerResponse = bodies["answer"]
    errors_doc = {409: {"description": "the loaded model has another task type"},
                  422: {"description": "invalid input (message says which field and why)"},
                  503: {"description": "the model is not loaded yet"}}

    @app.post("/v1/similarity", response_model=SimilarityResponse, responses=errors_doc,
              summary="Sentence-pair similarity (regression models): score 0-5 and similar")
    async def similarity(body: SimilarityRequest, model: Annotated[Any, Depends(serving("similarity"))]):
        scores = await run([(it.text_a, it.text_b) for it in body.items])
        lo, hi = SCORE_RANGE
        clipped = [min(hi, max(lo, s)) for s in scores]
        return {"model": state["info"]["task"],
                "results": [{"score": s, "similar": s >= SIMILAR_THRESHOLD} for s in clipped]}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors_doc,
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
        return {"model": state["info"]["task"], "results": await run(inputs)}

    @app.post("/v1/answer", response_model=AnswerResponse, responses=errors_doc,
              summary="Extractive QA: the answer span in the context")
    async def answer(body: AnswerRequest, model: Annotated[Any, Depends(serving("answer"))]):
        results = await run([(it.question, it.context) for it in body.items])
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

    @app.get("/metrics", summary="Request, item and model-call counters (batching)")
    async def metrics():
        return {**counters.as_dict(), "queued_items": state["batcher"].queue.qsize()
                if state["batcher"] else 0,
                "settings": dataclasses.asdict(settings)}

    app.state.korlm = state
    app.state.counters = counters
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
