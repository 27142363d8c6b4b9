"""A local HTTP server standing in for the Kubeflow Pipelines REST API (v2beta1), for
testing `korlm pipeline submit --target kfp` without a cluster.

It speaks the part of the API that ``kfp.Client`` 2.17 calls to submit a compiled
pipeline and follow it: ``GET /apis/v2beta1/healthz``, list (with the client's
``display_name`` EQUALS filter) and create experiments, ``POST /apis/v2beta1/runs`` and
``GET /apis/v2beta1/runs/{id}``. It keeps every request and every created experiment and
run (the whole JSON body, so a test can read the pipeline spec the client sent). Each
GET of a run moves it one step along ``states`` (e.g. PENDING, RUNNING, SUCCEEDED); a run
that ends FAILED carries an error and a failed task, as the real API reports them.
Nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


class KfpApiStandIn:
    """``with KfpApiStandIn(states=[...]) as kfp: kfp.Client(host=kfp.url)``."""

    def __init__(self, states: tuple[str, ...] = ("PENDING", "RUNNING", "SUCCEEDED"),
                 failed_task: str = "pretrain", multi_user: bool = False):
        self.states = states
        self.failed_task = failed_task
        self.multi_user = multi_user
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self._polls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> KfpApiStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ API

    def _list_experiments(self, query: dict[str, list[str]]) -> dict[str, Any]:
        found = list(self.experiments.values())
        raw = query.get("filter", [None])[0]
        if raw:
            for predicate in json.loads(raw).get("predicates", []):
                # kfp.Client sends {"operation": "EQUALS", "key": "display_name", "stringValue": NAME}
                if predicate.get("operation") not in ("EQUALS", 1) or predicate.get("key") != "display_name":
                    raise ValueError(f"stand-in does not support the filter {predicate}")
                found = [e for e in found if e["display_name"] == predicate.get("stringValue")]
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": "2026-11-22T00:00:00Z",
                      "storage_state": "AVAILABLE"}
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _create_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("experiment_id") not in self.experiments:
            return 404, {"code": 5, "message": f"experiment {body.get('experiment_id')} not found"}
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            return 400, {"code": 3, "message": "a run needs a pipeline spec or a pipeline version"}
        run = {**body, "run_id": str(uuid.uuid4()), "created_at": "2026-11-22T00:00:01Z",
               "storage_state": "AVAILABLE", "state": self.states[0]}
        self.runs[run["run_id"]] = run
        self._polls[run["run_id"]] = 0
        return 200, run

    def _get_run(self, run_id: str) -> tuple[int, dict[str, Any]]:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"code": 5, "message": f"run {run_id} not found"}
        self._polls[run_id] += 1
        state = self.states[min(self._polls[run_id], len(self.states) - 1)]
        run["state"] = state
        tasks = [{"run_id": run_id, "task_id": str(uuid.uuid5(uuid.NAMESPACE_URL, run_id + name)),
                  "display_name": name, "state": "SUCCEEDED", "pod_name": f"{name}-pod",
                  "child_tasks": [{"pod_name": f"{run['display_name']}-system-container-impl-{i}"}]}
                 for i, name in enumerate(("clean", "vocab", "pretrain-data", "pretrain", "report"))]
        if state == "SUCCEEDED":
            tasks[-1]["outputs"] = {"report": {"artifact_ids": ["42"]}}
        if state == "FAILED":
            run["error"] = {"code": 2, "message": f"task {self.failed_task} failed: exit code 1"}
            for task in tasks:
                if task["display_name"] == self.failed_task:
                    task["state"] = "FAILED"
                    task["error"] = {"code": 2, "message": "OOMKilled"}
        if state in ("SUCCEEDED", "FAILED", "CANCELED"):
            run["finished_at"] = "2026-11-22T01:00:00Z"
        run["run_details"] = {"task_details": tasks}
        return 200, run

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                with api._lock:
                    api.requests.append((method, self.path))
                    if (method, url.path) == ("GET", f"{API}/healthz"):
                        return self._send(200, {"multi_user": api.multi_user})
                    if (method, url.path) == ("GET", f"{API}/experiments"):
                        return self._send(200, api._list_experiments(query))
                    if (method, url.path) == ("POST", f"{API}/experiments"):
                        return self._send(200, api._create_experiment(body))
                    if (method, url.path) == ("POST", f"{API}/runs"):
                        return self._send(*api._create_run(body))
                    if method == "GET" and url.path.startswith(f"{API}/runs/"):
                        return self._send(*api._get_run(url.path.rsplit("/", 1)[1]))
                self._send(404, {"code": 5, "message": f"stand-in does not serve {method} {url.path}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler
