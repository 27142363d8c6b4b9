"""Prometheus metrics of ``korlm serve`` (``GET /metrics``): a registry per app, an ASGI
middleware that counts and times every response, and the server's counters read at
scrape time. prometheus-client docs: https://prometheus.github.io/client_python/"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def _powers_of_two(upto: int) -> list[float]:
    """Histogram buckets 1, 2, 4, ... up to the first power of two >= ``upto``."""
    out = [1.0]
    while out[-1] < upto:
        out.append(out[-1] * 2)
    return out


class ServeMetrics:
    """The Prometheus metrics of one app, in a registry of its own (several apps can live
    in one process, as in the tests). ``GET /metrics`` exposes them in the text format:

    - ``korlm_serve_http_responses_total{endpoint, status}``: every response (errors are
      the 4xx/5xx ``status`` values; 499: the client went away first). ``endpoint`` is a
      route path of the app, or ``other`` (404s), so that fuzzed paths add no series;
    - ``korlm_serve_http_request_duration_seconds{endpoint}``: latency histogram, from the
      request's arrival to the last byte of the response;
    - ``korlm_serve_request_items``: items per /v1 request that reached the model;
    - ``korlm_serve_batch_items``: items per gathered model call (the batching);
    - the server's ``ServeCounters`` (``korlm_serve_requests_total``, ``..._items_total``,
      ``..._model_calls_total``, ``..._isolation_calls_total``, ...) read at scrape time,
      and gauges ``korlm_serve_queued_items``, ``korlm_serve_largest_batch``,
      ``korlm_serve_model_loaded``.

    Docs: https://prometheus.github.io/client_python/ (custom collectors, registries)."""

    def __init__(self, counters: Any, state: dict[str, Any], *, max_items: int,
                 max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.endpoints: set[str] = set()  # filled by create_app once the routes exist
        self.responses = Counter("korlm_serve_http_responses", "HTTP responses by endpoint "
                                 "and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("korlm_serve_http_request_duration_seconds", "Time from a "
                                 "request's arrival to the end of its response",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.request_items = Histogram("korlm_serve_request_items", "Items per /v1 request "
                                       "that reached the model", registry=self.registry,
                                       buckets=_powers_of_two(max_items))
        self.batch_items = Histogram("korlm_serve_batch_items", "Items per gathered model "
                                     "call (request batching)", registry=self.registry,
                                     buckets=_powers_of_two(max_batch_size))
        self.registry.register(_CountersCollector(counters, state))

    def endpoint(self, path: str) -> str:
        return path if path in self.endpoints else "other"

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.responses.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _CountersCollector:
    """The server's ``ServeCounters`` and the queue as Prometheus metrics, read at scrape time
    (one bookkeeping for /metrics and /metrics.json)."""

    _HELP = {"requests": "/v1 requests that reached the model",
             "items": "Items gathered into model calls",
             "model_calls": "Model calls, including isolation calls",
             "rejected_requests": "/v1 requests answered 4xx",
             "failed_requests": "Requests answered 5xx",
             "failed_model_calls": "Model calls that raised",
             "isolation_calls": "Calls on parts of a failed batch, and probe calls",
             "failed_items": "Items that failed on their own after a split"}

    def __init__(self, counters: Any, state: dict[str, Any]):
        self.counters, self.state = counters, state

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, doc in self._HELP.items():
            yield CounterMetricFamily(f"korlm_serve_{name}", doc,
                                      value=getattr(self.counters, name))
        yield GaugeMetricFamily("korlm_serve_largest_batch", "Largest model call so far "
                                "(items)", value=self.counters.largest_batch)
        batcher = self.state.get("batcher")
        yield GaugeMetricFamily("korlm_serve_queued_items", "Items waiting for a model call",
                                value=batcher.queue.qsize() if batcher else 0)
        yield GaugeMetricFamily("korlm_serve_model_loaded", "1 once the model is loaded",
                                value=float(self.state.get("model") is not None))


class Instrument:
    """ASGI middleware, outermost: counts every response by endpoint and status and
    times it, the 413s of the server's ``BodyLimit`` and 500s of unhandled errors included."""

    def __init__(self, app: Any, *, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer
            raise
        except Exception:
            status = status or 500  # Starlette's ServerErrorMiddleware answers 500
            raise
        finally:
            self.metrics.observe(self.metrics.endpoint(scope["path"]), status or 499,
                                 time.perf_counter() - start)
