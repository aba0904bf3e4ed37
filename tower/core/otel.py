"""OpenTelemetry: a session's threads, model calls and tool calls as spans, with the GenAI
semantic conventions (`gen_ai.*`), sent to the OTLP endpoint teams already run.

One span builder serves both ways in: live (a bus subscriber, while the session runs, when
the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set)
and afterwards (`tower export SESSION --format otlp` feeds it the recorded log). Every span
takes its start and end times from the events, so a session exported a week later has
the same timings it had live.

The spans are a session's (root), each thread's (`invoke_agent`), each model call's
(`chat`, with its model, token usage, finish reason and cost in `tower.cost_usd`) and
each tool call's (`execute_tool`). They carry ids, names, counts and money, never a
prompt, an answer or a tool's arguments, so no secret or private text leaves through
them. The SDK's batch processor exports from its own thread: the event loop never waits
on the network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tower.core.events import ENDED_STATES, Event, EventKind, ThreadState

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("tower.otel")

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SCOPE = "tower"
_TIMEOUT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def endpoint_configured() -> bool:
    """Whether the standard OTLP endpoint variables ask for an export."""
    return any(os.environ.get(v) for v in ENDPOINT_VARS)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def provider_of(model: str) -> str:
    """The GenAI system of a model name: its litellm provider prefix (sim models: "sim")."""
    head, sep, _ = model.partition("/")
    if sep:
        return head
    return "openai" if model.startswith(("gpt-", "o1", "o3", "o4")) else "unknown"


class SpanBuilder:
    """Turns a session's events, in order, into spans on `tracer`. Open spans are ended by
    the events that close them; `close` ends whatever a crash left open at the last event's
    time, marked unfinished."""

    def __init__(self, tracer: Tracer, session: str = "") -> None:
        self.tracer = tracer
        self.session = session
        self.root: Span | None = None
        self.threads: dict[str, Span] = {}
        self.calls: dict[str, Span] = {}  # by call id
        self.call_thread: dict[str, str | None] = {}  # ...and whose it is
        self.tools: dict[tuple[str, str], Span] = {}  # by (thread, tool call id)
        self.ended: set[str] = set()  # threads whose span has ended
        self.last_ts = 0.0

    # --- spans -----------------------------------------------------------------------------

    def _start(
        self, name: str, ts: float, parent: Span | None, kind: Any = None, **attrs: Any
    ) -> Span:
        from opentelemetry import trace

        ctx = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            name,
            context=ctx,
            kind=kind if kind is not None else trace.SpanKind.INTERNAL,
            start_time=_ns(ts),
            attributes={k.replace("__", "."): v for k, v in attrs.items() if v is not None},
        )
        return span

    def _end(self, span: Span | None, ts: float, error: str | None = None) -> None:
        if span is None:
            return
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error[:200]))
            span.set_attribute("error.type", error.split(":", 1)[0][:80] or "error")
        span.end(end_time=_ns(ts))

    def _thread(self, tid: str | None, ts: float | None = None) -> Span | None:
        """The thread's span; one a live export of a resumed session never saw spawned is
        opened now (its earlier part was exported before the crash, or never)."""
        if tid is None:
            return None
        span = self.threads.get(tid)
        if span is None and ts is not None and tid not in self.ended:
            span = self.threads[tid] = self._start(
                "invoke_agent",
                ts,
                self.root,
                gen_ai__operation__name="invoke_agent",
                gen_ai__agent__id=tid,
                gen_ai__conversation__id=tid,
                tower__resumed=True,
            )
        return span

    # --- events ----------------------------------------------------------------------------

    def feed(self, ev: Event) -> None:
        self.last_ts = max(self.last_ts, ev.ts)
        handler = _HANDLERS.get(ev.kind)
        if handler is not None:
            try:
                handler(self, ev)
            except (KeyError, TypeError, ValueError) as exc:  # a damaged event: no span
                log.debug("event %s not exported: %s", ev.seq, exc)

    def feed_all(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)

    def _session_started(self, ev: Event) -> None:
        p = ev.payload
        self.session = self.session or str(p.get("session") or "")
        self.root = self._start(
            f"tower session {p.get('project', '')}".strip(),
            ev.ts,
            None,
            tower__session=self.session or None,
            tower__project=p.get("project"),
            tower__budget_usd=p.get("budget_usd"),
        )

    def _session_resumed(self, ev: Event) -> None:
        if self.root is None:  # a live export that starts at the resume
            self.root = self._start(
                "tower session (resumed)", ev.ts, None, tower__session=self.session or None
            )
        self.root.add_event("resumed", timestamp=_ns(ev.ts))

    def _session_ended(self, ev: Event) -> None:
        self.close(ev.ts, str(ev.payload.get("reason", "")))

    def _spawned(self, ev: Event) -> None:
        p, tid = ev.payload, ev.thread or ""
        parent = self._thread(p.get("parent")) or self.root
        self.threads[tid] = self._start(
            f"invoke_agent {p.get('agent', '')}",
            ev.ts,
            parent,
            gen_ai__operation__name="invoke_agent",
            gen_ai__agent__name=p.get("agent"),
            gen_ai__agent__id=tid,
            gen_ai__conversation__id=tid,
            tower__task=p.get("task"),
            tower__session=self.session or None,
        )

    def _state(self, ev: Event) -> None:
        state = ThreadState(ev.payload["state"])
        span = self.threads.get(ev.thread or "")
        if span is None or state not in ENDED_STATES:
            return
        span.set_attribute("tower.thread.state", str(state))
        span.set_attribute("tower.thread.reason", str(ev.payload.get("reason", ""))[:200])
        del self.threads[ev.thread or ""]
        self.ended.add(ev.thread or "")
        failed = state is ThreadState.FAILED
        self._end(span, ev.ts, f"{state}: {ev.payload.get('reason', '')}" if failed else None)

    def _llm_started(self, ev: Event) -> None:
        from opentelemetry.trace import SpanKind

        p = ev.payload
        model = str(p.get("model", ""))
        self.call_thread[str(p.get("call"))] = ev.thread
        self.calls[str(p.get("call"))] = self._start(
            f"chat {model}",
            ev.ts,
            self._thread(ev.thread, ev.ts),
            SpanKind.CLIENT,
            gen_ai__operation__name="chat",
            gen_ai__system=provider_of(model),
            gen_ai__provider__name=provider_of(model),
            gen_ai__request__model=model,
            gen_ai__request__max_tokens=p.get("max_tokens") or None,
            tower__call=p.get("call"),
            tower__step=p.get("step"),
            tower__attempt=p.get("attempt"),
            tower__reserved_usd=p.get("reserved_usd"),
        )

    def _llm_finished(self, ev: Event) -> None:
        p = ev.payload
        self.call_thread.pop(str(p.get("call")), None)
        span = self.calls.pop(str(p.get("call")), None)
        if span is None:
            return
        usage = p.get("usage") or {}
        attrs = {
            "gen_ai.response.model": p.get("model"),
            "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
            "gen_ai.response.finish_reasons": [str(p.get("finish_reason") or "stop")],
            "tower.cost_usd": p.get("cost_usd"),
            "tower.usage.cached_tokens": usage.get("cached_tokens"),
            "tower.saved_usd": p.get("saved_usd"),
            "tower.usage.estimated": usage.get("estimated"),
        }
        for key, value in attrs.items():
            if value is not None:
                span.set_attribute(key, value)
        self._end(span, ev.ts)

    def _llm_failed(self, ev: Event) -> None:
        self.call_thread.pop(str(ev.payload.get("call")), None)
        span = self.calls.pop(str(ev.payload.get("call")), None)
        self._end(span, ev.ts, str(ev.payload.get("error") or "failed"))

    def _llm_lost(self, ev: Event) -> None:
        """A call a crash cut off, booked at resume: its span (open since its start) ends
        as an error, possibly billed at its reservation."""
        reason = str(ev.payload.get("reason") or "lost")
        for call in [c for c, t in self.call_thread.items() if t == ev.thread]:
            span = self.calls.pop(call, None)
            del self.call_thread[call]
            if span is not None:
                span.set_attribute("tower.cost_usd", ev.payload.get("reserved_usd", 0.0))
                span.set_attribute("tower.possibly_billed", True)
                self._end(span, ev.ts, f"lost: {reason}")

    def _llm_cached(self, ev: Event) -> None:
        from opentelemetry.trace import SpanKind

        p = ev.payload
        model = str(p.get("model", ""))
        usage = p.get("usage") or {}
        span = self._start(
            f"chat {model}",
            ev.ts,
            self._thread(ev.thread, ev.ts),
            SpanKind.CLIENT,
            gen_ai__operation__name="chat",
            gen_ai__system=provider_of(model),
            gen_ai__provider__name=provider_of(model),
            gen_ai__request__model=model,
            gen_ai__response__model=model,
            gen_ai__usage__input_tokens=usage.get("prompt_tokens"),
            gen_ai__usage__output_tokens=usage.get("completion_tokens"),
            tower__call=p.get("call"),
            tower__step=p.get("step"),
            tower__cost_usd=0.0,
            tower__cache_hit=True,
            tower__saved_usd=p.get("saved_usd"),
        )
        self._end(span, ev.ts)

    def _tool_called(self, ev: Event) -> None:
        p = ev.payload
        tool = str(p.get("tool", ""))
        self.tools[(ev.thread or "", str(p.get("call_id")))] = self._start(
            f"execute_tool {tool}",
            ev.ts,
            self._thread(ev.thread, ev.ts),
            gen_ai__operation__name="execute_tool",
            gen_ai__tool__name=tool,
            gen_ai__tool__call__id=p.get("call_id"),
            tower__policy=p.get("policy"),
        )

    def _tool_result(self, ev: Event) -> None:
        p = ev.payload
        span = self.tools.pop((ev.thread or "", str(p.get("call_id"))), None)
        self._end(span, ev.ts, None if p.get("ok") else "tool_error: the tool failed")

    def close(self, ts: float | None = None, reason: str = "") -> None:
        """Ends every span still open (a session cut off, or the last event read)."""
        at = self.last_ts if ts is None else ts
        for span in [*self.tools.values(), *self.calls.values()]:
            self._end(span, at, "unfinished: the session ended first")
        for span in self.threads.values():
            span.set_attribute("tower.thread.state", "unfinished")
            self._end(span, at)
        self.tools.clear()
        self.calls.clear()
        self.call_thread.clear()
        self.threads.clear()
        if self.root is not None:
            if reason:
                self.root.set_attribute("tower.session.end_reason", reason)
            self._end(self.root, at)
            self.root = None


_HANDLERS = {
    EventKind.SESSION_STARTED: SpanBuilder._session_started,
    EventKind.SESSION_ENDED: SpanBuilder._session_ended,
    EventKind.SESSION_RESUMED: SpanBuilder._session_resumed,
    EventKind.THREAD_SPAWNED: SpanBuilder._spawned,
    EventKind.THREAD_STATE: SpanBuilder._state,
    EventKind.LLM_STARTED: SpanBuilder._llm_started,
    EventKind.LLM_FINISHED: SpanBuilder._llm_finished,
    EventKind.LLM_FAILED: SpanBuilder._llm_failed,
    EventKind.LLM_LOST: SpanBuilder._llm_lost,
    EventKind.LLM_CACHED: SpanBuilder._llm_cached,
    EventKind.TOOL_CALLED: SpanBuilder._tool_called,
    EventKind.TOOL_RESULT: SpanBuilder._tool_result,
}


def tracer_provider(exporter: SpanExporter | None = None, batch: bool = True) -> TracerProvider:
    """A provider exporting to `exporter` (default: OTLP over HTTP, configured by the
    standard OTEL_* variables), named "tower" as the service."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tower")})
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


class LiveExport:
    """A running session's spans, exported as its events happen (a bus subscriber)."""

    def __init__(self, provider: TracerProvider, session: str) -> None:
        self.provider = provider
        self.builder = SpanBuilder(provider.get_tracer(SCOPE), session)

    def __call__(self, ev: Event) -> None:
        try:
            self.builder.feed(ev)
        except Exception as exc:  # an exporter's trouble never stops the session
            log.warning("span for event %s not exported: %s", ev.seq, exc)

    def shutdown(self) -> None:
        """Ends open spans and flushes the exporter (blocking: call it off the event loop)."""
        self.builder.close()
        self.provider.shutdown()


class ExportFailed(Exception):
    """The OTLP endpoint did not take the spans; the message names it."""


def collect_spans(events: Iterable[Event], session: str) -> list[Any]:
    """A recorded session's spans, built in memory (nothing sent yet)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = tracer_provider(memory, batch=False)
    builder = SpanBuilder(provider.get_tracer(SCOPE), session)
    builder.feed_all(events)
    builder.close()
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def send_spans(spans: list[Any], chunk: int = 512) -> str:
    """Sends spans to the OTLP/HTTP endpoint the standard variables name, in batches;
    returns that endpoint. Blocking (the CLI's `tower export`). Raises ExportFailed. The
    SDK retries a failing endpoint until its timeout: OTEL_EXPORTER_OTLP_TIMEOUT, else 10 s."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    standard = any(os.environ.get(v) for v in _TIMEOUT_VARS)
    exporter = OTLPSpanExporter() if standard else OTLPSpanExporter(timeout=10)
    where = str(getattr(exporter, "_endpoint", "") or "the OTLP endpoint")
    try:
        for start in range(0, len(spans), chunk):
            if exporter.export(spans[start : start + chunk]) is not SpanExportResult.SUCCESS:
                raise ExportFailed(f"{where} did not take the spans (see the log above)")
    finally:
        exporter.shutdown()
    return where
