"""A local OTLP/HTTP receiver for tests: POST /v1/traces with a protobuf
ExportTraceServiceRequest, decoded with the OpenTelemetry protocol's own classes (not
tower's code), its spans kept for the test to read.

    with OtlpReceiver() as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url}
        ...
        rx.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[Any] = []  # opentelemetry.proto.trace.v1.Span, in arrival order
        self.resources: list[dict[str, Any]] = []
        self.requests = 0
        self.paths: list[str] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver._cond:
                    receiver.requests += 1
                    receiver.paths.append(self.path)
                    for rs in req.resource_spans:
                        attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                        receiver.resources.append(attrs)
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                    receiver._cond.notify_all()
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def wait_for(self, pred: Callable[[list[Any]], bool], timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.spans), timeout):
                raise AssertionError(f"the receiver got {len(self.spans)} spans, not as expected")

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def attrs(span: Any) -> dict[str, Any]:
    """A protobuf span's attributes as plain values."""
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[a.key] = [x.string_value for x in v.array_value.values]
        else:
            out[a.key] = getattr(v, kind) if kind else None
    return out
