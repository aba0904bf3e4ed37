"""A thread in full: its transcript (messages, tool calls, results, decisions), its cost per
step, and the same verbs as the main screen (the app's bindings act on this thread)."""

from __future__ import annotations

import json
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, RichLog, Static

from tower.core.events import Event, EventKind
from tower.core.policy import UNGATED
from tower.ui.format import tokens, usd


def transcript_lines(ev: Event) -> list[Text]:
    """How one event reads in a transcript (empty for events it does not show)."""
    p = ev.payload
    k = ev.kind
    if k is EventKind.THREAD_SPAWNED:
        return [Text(f"task: {p.get('prompt', p.get('title', ''))}", style="bold")]
    if k is EventKind.LLM_FINISHED:
        head = Text(
            f"── step {p['step']} · {p['model']} · {tokens(p['usage']['total_tokens'])} tokens"
            f" · {usd(p['cost_usd']) if p.get('price_known', True) else 'price unknown'} ──",
            style="dim",
        )
        out = [head]
        if p.get("text"):
            out.append(Text(p["text"]))
        for call in p.get("tool_calls", []):
            fn = call.get("function", {})
            out.append(Text(f"→ {fn.get('name')}({fn.get('arguments', '')[:300]})", style="bold"))
        return out
    if k is EventKind.LLM_FAILED and p.get("error") != "cancelled":
        return [Text(f"✗ model call failed: {p['error']}", style="red")]
    if k is EventKind.TOOL_CALLED and p.get("policy") and p["tool"] not in UNGATED:
        style = {"deny": "red", "ask": "yellow"}.get(p["policy"], "dim")
        return [Text(f"  policy: {p['policy']} — {p.get('rule', '')}", style=style)]
    if k is EventKind.TOOL_RESULT:
        result = str(p.get("result", ""))
        short = result if len(result) <= 600 else result[:600] + f"… ({len(result)} chars)"
        return [Text(f"← {p['tool']}: {short}", style="green" if p.get("ok") else "red")]
    if k is EventKind.INBOX_OPENED:
        what = p.get("question") or p.get("reason") or p.get("tool", "")
        return [Text(f"⚑ inbox {p['item']} ({p['kind']}): {what}", style="yellow")]
    if k is EventKind.INBOX_CLOSED:
        extra = f": {p['text']}" if p.get("text") else ""
        if p.get("args") is not None:
            extra += f" with args {json.dumps(p['args'])[:200]}"
        return [Text(f"✓ {p['item']} {p['resolution']} by {p['by']}{extra}", style="yellow")]
    if k is EventKind.ESCALATED:
        return [
            Text(
                f"⇧ escalated {p['from_model']} → {p['to_model']} ({p['trigger']})", style="magenta"
            )
        ]
    if k is EventKind.COMMENT:
        return [Text(f"✎ {p['by']}: {p['text']}", style="cyan")]
    if k is EventKind.BUDGET_RAISED:
        return [Text(f"$ budget raised by {usd(p.get('usd', 0))}", style="yellow")]
    if k is EventKind.THREAD_STATE:
        reason = f" — {p['reason']}" if p.get("reason") else ""
        answer = f"\nanswer: {p['answer']}" if p.get("answer") else ""
        return [Text(f"● {p['state']}{reason}{answer}", style="italic")]
    return []


class ThreadScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = """
    ThreadScreen #head { height: auto; padding: 0 1; background: $panel; }
    ThreadScreen Horizontal { height: 1fr; }
    ThreadScreen RichLog { width: 2fr; border: round $panel-lighten-2; }
    ThreadScreen DataTable { width: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, thread: str) -> None:
        super().__init__()
        self.thread = thread

    def compose(self) -> ComposeResult:
        yield Static(id="head")
        with Horizontal():
            yield RichLog(id="transcript", wrap=True, markup=False, auto_scroll=True)
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
        for ev in events:
            for line in transcript_lines(ev):
                log.write(line)
            if ev.kind is EventKind.LLM_FINISHED:
                p = ev.payload
                table.add_row(
                    str(p["step"]),
                    p["model"],
                    str(p["usage"]["prompt_tokens"]),
                    str(p["usage"]["completion_tokens"]),
                    usd(p["cost_usd"]),
                    f"{p.get('seconds', 0):.2f}",
                )

    def show_head(self, text: Text) -> None:
        self.query_one("#head", Static).update(text)
