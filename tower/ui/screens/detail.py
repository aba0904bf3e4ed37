"""A thread in full: its transcript (messages, tool calls, results, decisions), its cost per
step, and the same verbs as the main screen (the app's bindings act on this thread)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from tower.core import payloads as pl
from tower.core.events import Event, EventKind
from tower.core.payloads import payload_of
from tower.core.policy import UNGATED
from tower.ui.format import tokens, usd

# Tool results longer than this are cut in the transcript; enter shows one whole, in place.
RESULT_CHARS = 600


def expandable(ev: Event) -> bool:
    """A tool result the transcript shows cut, which enter can show whole."""
    if ev.kind is not EventKind.TOOL_RESULT:
        return False
    p = payload_of(ev)
    return isinstance(p, pl.ToolResult) and len(str(p.result)) > RESULT_CHARS


_CALL_ROWS = frozenset({EventKind.LLM_FINISHED, EventKind.LLM_CACHED})


def transcript_lines(ev: Event, expanded: bool = False) -> list[Text]:
    """How one event reads in a transcript (empty for events it does not show); a long tool
    result is cut unless expanded."""
    lines = _LINES.get(pl.TYPES[ev.kind])
    return lines(payload_of(ev), expanded) if lines is not None else []


def _spawned(p: pl.ThreadSpawned, expanded: bool) -> list[Text]:
    out = [Text(f"task: {p.prompt if p.prompt is not None else p.title}", style="bold")]
    if p.parent is not None:  # a sub-agent: who started it, and its spending's ceiling
        out.insert(0, Text(f"sub-agent of {p.parent}, spending from its budget", style="dim"))
    if p.after:
        out.insert(0, Text(f"ran after {', '.join(p.after)}", style="dim"))
    return out


def _finished(p: pl.LlmFinished, expanded: bool) -> list[Text]:
    # "~": the provider sent no usage; tower counted with the model's tokenizer.
    approx = "~" if p.usage.estimated else ""
    cached = (
        f" ({tokens(p.usage.cached_tokens)} cached, saved {usd(p.saved_usd)})"
        if p.usage.cached_tokens
        else ""
    )
    head = Text(
        f"── step {p.step} · {p.model} · {approx}{tokens(p.usage.total_tokens)}"
        f" tokens{' (estimated: no usage from the provider)' if approx else ''}{cached}"
        f" · {usd(p.cost_usd) if p.price_known else 'price unknown'} ──",
        style="dim",
    )
    out = [head]
    if p.text:
        out.append(Text(p.text))
    for call in p.tool_calls:
        fn = call.get("function", {})
        out.append(Text(f"→ {fn.get('name')}({fn.get('arguments', '')[:300]})", style="bold"))
    return out


def _cached(p: pl.LlmCached, expanded: bool) -> list[Text]:
    # Served from the response cache: no provider, no cost; where the answer was first paid.
    head = Text(f"── step {p.step} · {p.model} · from the response cache · $0 ──", style="dim")
    source = f"first paid {usd(p.saved_usd)} in session {p.source_session} (event {p.source_seq})"
    out = [head, Text(source, style="dim")]
    if p.text:
        out.append(Text(p.text))
    for call in p.tool_calls:
        fn = call.get("function", {})
        out.append(Text(f"→ {fn.get('name')}({fn.get('arguments', '')[:300]})", style="bold"))
    return out


def _compacted(p: pl.Compacted, expanded: bool) -> list[Text]:
    how = f"summarised by {p.model}, {usd(p.cost_usd)}" if p.mode == "summary" else "elided"
    head = Text(
        f"── compacted: {len(p.folded)} older tool result(s) {how};"
        f" prompt {tokens(p.tokens_before)} → {tokens(p.tokens_after)}"
        f" of a {tokens(p.window)} window ──",
        style="dim",
    )
    out = [head]
    if p.note:
        out.append(Text(p.note, style="dim"))
    if p.summary:
        lines = p.summary.splitlines()
        shown = lines if expanded else lines[:6]
        out.append(Text("\n".join(shown)))
        if len(shown) < len(lines):
            out.append(Text(f"… {len(lines) - len(shown)} more line(s)", style="dim"))
    return out


def _failed(p: pl.LlmFailed, expanded: bool) -> list[Text]:
    if p.error == "cancelled":
        return []
    return [Text(f"✗ model call failed: {p.error}", style="red")]


def _called(p: pl.ToolCalled, expanded: bool) -> list[Text]:
    if not p.policy or p.tool in UNGATED:
        return []
    style = {"deny": "red", "ask": "yellow"}.get(p.policy, "dim")
    return [Text(f"  policy: {p.policy} — {p.rule}", style=style)]


def _result(p: pl.ToolResult, expanded: bool) -> list[Text]:
    result = str(p.result)
    style = "green" if p.ok else "red"
    if len(result) <= RESULT_CHARS:
        return [Text(f"← {p.tool}: {result}", style=style)]
    if expanded:
        line = Text(f"← {p.tool}: {result}", style=style)
        line.append(f"\n  ({len(result)} chars · enter folds it)", style="dim")
        return [line]
    line = Text(f"← {p.tool}: {result[:RESULT_CHARS]}… ", style=style)
    line.append(f"({len(result)} chars · enter shows all)", style="dim")
    return [line]


def _opened(p: pl.InboxOpened, expanded: bool) -> list[Text]:
    what = p.extra.get("question") or p.reason or p.extra.get("tool", "")
    return [Text(f"⚑ inbox {p.item} ({p.kind}): {what}", style="yellow")]


def _closed(p: pl.InboxClosed, expanded: bool) -> list[Text]:
    extra = f": {p.text}" if p.text else ""
    if p.args is not None:
        extra += f" with args {json.dumps(p.args)[:200]}"
    return [Text(f"✓ {p.item} {p.resolution} by {p.by}{extra}", style="yellow")]


def _escalated(p: pl.Escalated, expanded: bool) -> list[Text]:
    return [Text(f"⇧ escalated {p.from_model} → {p.to_model} ({p.trigger})", style="magenta")]


def _comment(p: pl.Comment, expanded: bool) -> list[Text]:
    return [Text(f"✎ {p.by}: {p.text}", style="cyan")]


def _raised(p: pl.BudgetRaised, expanded: bool) -> list[Text]:
    return [Text(f"$ budget raised by {usd(p.usd)}", style="yellow")]


def _state(p: pl.ThreadStateChanged, expanded: bool) -> list[Text]:
    reason = f" — {p.reason}" if p.reason else ""
    answer = f"\nanswer: {p.answer}" if p.answer else ""
    return [Text(f"● {p.state}{reason}{answer}", style="italic")]


# Each shown kind's lines, by payload type; kinds not here show nothing.
_LINES: dict[type[pl.Payload], Callable[[Any, bool], list[Text]]] = {
    pl.ThreadSpawned: _spawned,
    pl.LlmFinished: _finished,
    pl.LlmCached: _cached,
    pl.Compacted: _compacted,
    pl.LlmFailed: _failed,
    pl.ToolCalled: _called,
    pl.ToolResult: _result,
    pl.InboxOpened: _opened,
    pl.InboxClosed: _closed,
    pl.Escalated: _escalated,
    pl.Comment: _comment,
    pl.BudgetRaised: _raised,
    pl.ThreadStateChanged: _state,
}


class ThreadScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("enter", "expand", "Whole result", priority=True),
    ]
    DEFAULT_CSS = """
    ThreadScreen #head { height: auto; padding: 0 1; background: $panel; }
    ThreadScreen #target { height: 1; padding: 0 1; background: $boost; }
    ThreadScreen Horizontal { height: 1fr; }
    ThreadScreen RichLog { width: 2fr; border: round $panel-lighten-2; }
    ThreadScreen DataTable { width: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, thread: str) -> None:
        super().__init__()
        self.thread = thread
        # The log's events are drawn first; live ones after them, never one twice.
        self.loaded = False
        self.last_seq = 0
        # What the transcript shows, and where: each shown event and its lines in the log
        # (None until the log has a size); long results shown whole, by event seq.
        self.shown: list[tuple[Event, tuple[int, int] | None]] = []
        self.expanded: set[int] = set()

    def compose(self) -> ComposeResult:
        yield Static(id="head")
        yield Static(id="target")
        with Horizontal():
            # min_width=1: wrap at the pane's width (the default wraps at 78 columns, which
            # hid text behind a scrollbar on a narrow screen and wasted a wide one).
            yield RichLog(id="transcript", wrap=True, markup=False, auto_scroll=True, min_width=1)
            yield DataTable(id="steps", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one(RichLog)
        log.border_title = f"transcript · {self.thread}"
        table = self.query_one(DataTable)
        table.border_title = "cost per step"
        table.add_columns("step", "model", "prompt", "output", "cost", "secs")

    def on_unmount(self) -> None:
        closed = getattr(self.app, "detail_closed", None)
        if closed is not None:
            closed(self)

    def add_events(self, events: list[Event]) -> None:
        log = self.query_one(RichLog)
        table = self.query_one(DataTable)
        follow = log.scroll_y >= log.max_scroll_y  # new lines scroll only a log at its end
        for ev in events:
            if ev.seq <= self.last_seq:
                continue  # already drawn (read from the log while it was also queued live)
            self.last_seq = ev.seq
            self._write(log, ev, follow)
            p = payload_of(ev) if ev.kind in _CALL_ROWS else None
            if isinstance(p, pl.LlmCached):
                table.add_row(
                    str(p.step),
                    p.model,
                    str(p.usage.prompt_tokens),
                    str(p.usage.completion_tokens),
                    "$0 (cache)",
                    "0.00",
                )
            elif isinstance(p, pl.LlmFinished):
                approx = "~" if p.usage.estimated else ""
                table.add_row(
                    str(p.step),
                    p.model,
                    f"{approx}{p.usage.prompt_tokens}",
                    f"{approx}{p.usage.completion_tokens}",
                    usd(p.cost_usd),
                    f"{p.seconds:.2f}",
                )

    def _write(self, log: RichLog, ev: Event, follow: bool) -> None:
        lines = transcript_lines(ev, ev.seq in self.expanded)
        if not lines:
            return
        start = len(log.lines)
        for line in lines:
            log.write(line, scroll_end=follow)
        end = len(log.lines)
        self.shown.append((ev, (start, end) if end > start else None))  # None: not drawn yet

    def _redraw(self) -> None:
        log = self.query_one(RichLog)
        events = [ev for ev, _span in self.shown]
        self.shown = []
        log.clear()
        for ev in events:
            self._write(log, ev, False)

    def action_expand(self) -> None:
        """Shows the long tool result in view whole (or cuts it again), where it stands: the
        lowest one on screen, else the nearest."""
        log = self.query_one(RichLog)
        if any(span is None for _ev, span in self.shown):
            self._redraw()  # written before the log had a size: place them now
        found = [(ev, span) for ev, span in self.shown if span is not None and expandable(ev)]
        if not found:
            self.notify("no long tool result in this transcript", timeout=2)
            return
        top = round(log.scroll_y)
        bottom = top + log.scrollable_content_region.height
        in_view = [(ev, span) for ev, span in found if span[0] < bottom and span[1] > top]
        ev, span = (
            in_view[-1]
            if in_view
            else min(found, key=lambda f: min(abs(f[1][0] - bottom), abs(f[1][1] - top)))
        )
        self.expanded ^= {ev.seq}
        offset = span[0] - top
        self._redraw()
        new = next(s for e, s in self.shown if e is ev)
        if new is not None:
            log.scroll_to(y=max(new[0] - max(offset, 0), 0), animate=False)

    def show_target(self, target: object, hints: str) -> None:
        """The thread's oldest waiting item: what a, d, r… act on from this screen."""
        label = getattr(target, "label", None)
        box = self.query("#target")
        if not box:
            return
        if label is None:
            box.first(Static).update(Text("nothing waiting for you", style="dim"))
        else:
            text = Text("▶ ", style="bold")
            text.append(str(label), style="bold reverse")
            text.append("  " + hints, style="dim")
            box.first(Static).update(text)

    def show_head(self, text: Text) -> None:
        self.query_one("#head", Static).update(text)
