"""The one fake Confluent schema registry of the test suite (GET /schemas/ids/{id},
POST /subjects/{s}/versions) on a free port, in a thread.

It records every request, can answer every request with an error status (``fail_with``), slow its
lookups (``delay``, with the peak of concurrent lookups in ``max_in_flight``), and can be taken down
(connections refused) and brought back on the same port."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCHEMA_BY_ID = re.compile(r"/schemas/ids/(\d+)")
_SUBJECT_VERSIONS = re.compile(r"/subjects/[^/]+/versions")


class FakeRegistry:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path), in arrival order
        self.fail_with: int | None = None  # an HTTP status every request gets while set
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def gets(self) -> list[int]:
        """The schema ids looked up, in arrival order."""
        with self._lock:
            paths = [path for method, path in self.requests if method == "GET"]
        return [int(m[1]) for m in map(_SCHEMA_BY_ID.fullmatch, paths) if m]

    def register(self, schema: dict[str, Any] | str) -> int:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        canonical = json.dumps(json.loads(text), sort_keys=True)
        with self._lock:
            if canonical not in self.ids:
                self.ids[canonical] = len(self.ids) + 100
                self.schemas[self.ids[canonical]] = text
            return self.ids[canonical]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _record(self, method: str) -> None:
                with registry._lock:
                    registry.requests.append((method, self.path))

            def _failing(self) -> bool:
                status = registry.fail_with
                if status:
                    self._reply(status, {"error_code": 50001, "message": "down"})
                return bool(status)

            def do_GET(self) -> None:
                self._record("GET")
                with registry._lock:
                    registry.in_flight += 1
                    registry.max_in_flight = max(registry.max_in_flight, registry.in_flight)
                try:
                    if registry.delay:
                        time.sleep(registry.delay)
                    if self._failing():
                        return
                    m = _SCHEMA_BY_ID.fullmatch(self.path)
                    if m and int(m[1]) in registry.schemas:
                        return self._reply(200, {"schema": registry.schemas[int(m[1])]})
                    return self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                finally:
                    with registry._lock:
                        registry.in_flight -= 1

            def do_POST(self) -> None:
                self._record("POST")
                # Read the body even when failing, so the client sees the status, not a reset.
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._failing():
                    return
                if not _SUBJECT_VERSIONS.fullmatch(self.path):
                    return self._reply(404, {"error_code": 404, "message": "no route"})
                return self._reply(200, {"id": registry.register(body["schema"])})

        return Handler

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        if self._server is not None:
            return
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: lookups now fail with connection refused."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self) -> None:
        self.down()
