"""`L`: every recorded session, newest first — replay, resume, fork at an event, export.

Keys (in the footer and the hint line):

- enter: replay the highlighted session in a `ReplayScreen` pushed over the live tower, which
  keeps running underneath; escape returns to it. The live session can be replayed too (up to
  the moment enter was pressed: the log is flushed first).
- r: resume a session that has unfinished threads. The live session's threads are running
  here already (said so); one running in another process cannot be resumed here.
- f: fork at a chosen event: a dialog asks for the event number (default: the last), shows
  the range and the event at that number (kind, thread, what happened), and refuses one after
  which every thread had ended (nothing would continue).
- e: export: a dialog asks for the format (jsonl: every event; csv: one row per thread) and the
  file (default `./<session>.jsonl`). It is written on the core's loop, off the UI thread,
  through the live log after a flush; a toast names the file and the count.

Resuming or forking another session means leaving this one, because a TowerApp owns one
session (supervisor, bus, log writer) for its whole life. So after a confirmation when threads
are still running, the app shuts down cleanly (every event committed; this session shows as
`unfinished` and can be resumed later) and exits with a `Handoff` as its return value.
tower/cli.py acts on it once the terminal is back: for a resume it opens the TUI on that
session exactly as `tower resume SESSION` does; for a fork it first copies events 1..N into a
new session, as `tower fork` (session.fork_headless) does, then opens the TUI on the copy,
continuing its unfinished threads live. Forking after the live session has closed means its
own newest events can be forked too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, Select

from tower.core.events import Event
from tower.core.store import SessionRow, Store
from tower.ui.screens.dialogs import ConfirmDialog, _Dialog


@dataclass(frozen=True, slots=True)
class Handoff:
    """The TUI's return value when it leaves its session for another: resume `session`, or
    (with `fork_at`) fork it after that event and continue the fork."""

    session: str
    fork_at: int | None = None


@dataclass(slots=True)
class SessionsHost:
    """What the screen needs from the live tower."""

    db: Path  # the log, for the replay's own connection
    current: str | None  # the live session
    # Runs `work(store)` on the core's loop with the live store; returns its result.
    run: Callable[[Callable[[Store], Coroutine[Any, Any, Any]]], Awaitable[Any]]
    live_threads: Callable[[], int]  # threads of the live session not ended
    shutdown: Callable[[], Awaitable[None]]  # stops the live session, flushes the log


def _when(ts: float | None, since: float | None = None) -> str:
    if ts is None:
        return "-"
    local = time.localtime(ts)
    if since is not None and time.localtime(since)[:3] == local[:3]:
        return time.strftime("%H:%M:%S", local)  # the same day as it started
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def describe_event(ev: Event) -> str:
    """One line for an event: kind, thread, and what it says (fork dialog)."""
    p = ev.payload
    detail = next(
        (
            f"{key} {p[key]}"
            for key in ("state", "tool", "kind", "resolution", "reason", "model")
            if isinstance(p.get(key), str) and p[key]
        ),
        "",
    )
    when = time.strftime("%H:%M:%S", time.localtime(ev.ts))
    parts = [f"event {ev.seq}: {ev.kind}", f"thread {ev.thread}" if ev.thread else "session"]
    if detail:
        parts.append(detail[:60])
    return " · ".join(parts) + f" · {when}"


class SessionTable(DataTable[str]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Replay", show=True, id="sessions_replay")
    ]


class SessionsScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "resume", "Resume", id="sessions_resume"),
        Binding("f", "fork", "Fork at…", id="sessions_fork"),
        Binding("e", "export", "Export", id="sessions_export"),
        Binding("escape,q,L", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    SessionsScreen { align: center middle; background: $background 60%; }
    SessionsScreen > Vertical {
        width: 132; max-width: 98%; height: 80%; border: thick $accent;
        background: $surface; padding: 1 2;
    }
    SessionsScreen SessionTable { height: 1fr; }
    SessionsScreen Label.hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(
        self,
        rows: list[SessionRow],
        current: str | None,
        host: SessionsHost | None = None,
        select: str | None = None,
    ) -> None:
        super().__init__()
        self.rows = rows
        self.current = current
        self.host = host
        self.select = select  # the session to highlight first (from the palette)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Sessions ({len(self.rows)}), newest first", classes="title")
            yield SessionTable(id="sessions", cursor_type="row", zebra_stripes=True)
            yield Label("", classes="hint", id="hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(SessionTable)
        table.add_columns(
            "id",
            "project",
            "started",
            "ended",
            "status",
            "done/failed/unfinished",
            "cost",
            "you min",
            "blocked min",
        )
        for r in reversed(self.rows):  # newest first
            status = "live (this one)" if r.id == self.current else r.status
            table.add_row(
                r.id,
                r.project,
                _when(r.started),
                _when(r.ended, r.started),
                status,
                f"{r.done}/{r.failed + r.killed}/{r.unfinished}",
                f"${r.cost_usd:.4f}",
                f"{r.human_minutes:.1f}",
                f"{r.blocked_minutes:.1f}",
                key=r.id,
            )
        table.focus()
        chosen = self.select if any(r.id == self.select for r in self.rows) else None
        if chosen is not None:
            table.move_cursor(row=table.get_row_index(chosen))
        self._hint(chosen or (self.rows[-1].id if self.rows else None))

    # --- the highlighted session --------------------------------------------------------

    def selected(self) -> SessionRow | None:
        table = self.query_one(SessionTable)
        if not self.rows or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.rows if r.id == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._hint(event.row_key.value)

    def _hint(self, session: str | None) -> None:
        hint = self.query_one("#hint", Label)
        if session is None:
            hint.update("no sessions yet · escape close")
            return
        row = next(r for r in self.rows if r.id == session)
        if row.id == self.current:
            resume = "r: it is the live session"
        elif row.status == "running":
            resume = "r: running in another process"
        elif row.unfinished:
            resume = f"r resume {row.unfinished} unfinished"
        else:
            resume = "r: nothing to resume"
        failed = f", {row.killed} of them killed" if row.killed else ""
        hint.update(
            f"{session}: {row.threads} thread(s): {row.done} done, {row.failed + row.killed}"
            f" failed{failed}, {row.unfinished} unfinished\n"
            f"enter replay · {resume} · f fork at an event · e export · escape close"
        )

    def _need_host(self) -> SessionsHost | None:
        if self.host is None:
            self.app.notify("sessions can only be opened from the live tower", severity="warning")
            return None
        if self.selected() is None:
            self.app.notify("no session to act on", severity="warning")
            return None
        return self.host

    # --- enter: replay ------------------------------------------------------------------

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.action_replay()

    async def action_replay(self) -> None:
        from tower.ui.replay_app import ReplayScreen

        host, row = self._need_host(), self.selected()
        if host is None or row is None:
            return
        if row.id == host.current:
            await host.run(lambda store: store.flush())  # the replay reads the log as of now
        app = self.app
        self.dismiss(None)
        app.push_screen(ReplayScreen(host.db, row.id))

    # --- r: resume ----------------------------------------------------------------------

    def action_resume(self) -> None:
        host, row = self._need_host(), self.selected()
        if host is None or row is None:
            return
        if row.id == host.current:
            self.app.notify(
                f"{row.id} is the live session: its threads are running here already",
                severity="warning",
            )
        elif row.status == "running":
            self.app.notify(
                f"{row.id} is still running in another process: resume it there",
                severity="warning",
            )
        elif not row.unfinished:
            self.app.notify(
                f"nothing to resume: every thread of {row.id} has ended", severity="warning"
            )
        else:
            self._leave(Handoff(row.id), f"resume {row.id} ({row.unfinished} unfinished thread(s))")

    def _leave(self, handoff: Handoff, what: str) -> None:
        """Closes the live session and exits the app with `handoff` (asks first if threads
        are still running)."""
        host = self.host
        assert host is not None

        async def go(yes: bool | None = True) -> None:
            if yes:
                try:
                    await host.shutdown()
                finally:
                    self.app.exit(handoff)

        live = host.live_threads()
        if not live:
            self.run_worker(go(), group="leave")
            return
        self.app.push_screen(
            ConfirmDialog(
                f"Leave this session to {what}? Its {live} running thread(s) stop now; the log"
                " keeps everything, and it can be resumed later.",
                yes="Leave",
            ),
            go,
        )

    # --- f: fork ------------------------------------------------------------------------

    @work(exclusive=True, group="fork")
    async def action_fork(self) -> None:
        from tower.core.replay import state_at

        host, row = self._need_host(), self.selected()
        if host is None or row is None:
            return
        session = row.id

        async def bounds(store: Store) -> tuple[int, int]:
            await store.flush()
            return (await store.bounds(session))[0], await store.last_thread_end(session)

        last, last_end = await host.run(bounds)
        if last < 1:
            self.app.notify(f"{session} has no events to fork", severity="warning")
            return
        # A finished session's last event is its end: nothing would be left to continue.
        # Offer the moment just before its last thread ended instead.
        default = last if row.unfinished or last_end < 2 else last_end - 1

        async def lookup(seq: int) -> Event | None:
            async def read(store: Store) -> Event | None:
                found = [ev async for ev in store.events(session, seq - 1, 1)]
                return found[0] if found else None

            return await host.run(read)

        at = await self.app.push_screen_wait(ForkDialog(session, last, lookup, default))
        if at is None:
            return
        if (await host.run(lambda store: state_at(store, session, at))).all_ended:
            self.app.notify(
                f"at event {at} every thread of {session} had ended: a fork would have nothing"
                " to continue",
                severity="warning",
            )
            return
        self._leave(Handoff(session, fork_at=at), f"fork {session} at event {at}")

    # --- e: export ----------------------------------------------------------------------

    @work(exclusive=True, group="export")
    async def action_export(self) -> None:
        from tower.core.replay import export_csv, export_jsonl

        host, row = self._need_host(), self.selected()
        if host is None or row is None:
            return
        session = row.id
        req = await self.app.push_screen_wait(ExportDialog(session))
        if req is None:
            return
        fmt, target = req
        path = Path(target).expanduser()

        async def write(store: Store) -> int:
            await store.flush()
            writer = export_jsonl if fmt == "jsonl" else export_csv
            with path.open("w", encoding="utf-8", newline="") as out:
                return await writer(store, session, out)

        try:
            n = await host.run(write)
        except OSError as exc:
            self.app.notify(
                f"cannot write {path}: {exc.strerror or exc}", title="export", severity="error"
            )
            return
        what = "events" if fmt == "jsonl" else "threads"
        self.app.notify(f"wrote {n} {what} of {session} to {path.resolve()}", title="exported")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class ForkDialog(_Dialog):
    """The event to fork after: its number (default the last), the range, what it was."""

    def __init__(
        self,
        session: str,
        last: int,
        lookup: Callable[[int], Awaitable[Event | None]],
        default: int | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.last = last
        self.lookup = lookup
        self.default = default if default is not None else last

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Fork {self.session} after event (1–{self.last})", classes="title")
            yield Input(value=str(self.default), id="seq", type="integer")
            yield Label("", id="event")
            yield Label("", classes="error", id="error")
            yield Label(
                "A new session copies events 1..N and continues its unfinished threads live;"
                " this tower's session stops first.\nenter fork · escape cancel"
            )

    def on_mount(self) -> None:
        self._show(self.default)

    def on_input_changed(self, event: Input.Changed) -> None:
        seq = self._seq(event.value)
        if seq is not None:
            self._show(seq)

    def _seq(self, text: str) -> int | None:
        try:
            seq = int(text.strip().lstrip("#"))
        except ValueError:
            self.query_one("#error", Label).update("an event number, e.g. 120")
            return None
        if not 1 <= seq <= self.last:
            self.query_one("#error", Label).update(f"events run from 1 to {self.last}")
            return None
        self.query_one("#error", Label).update("")
        return seq

    @work(exclusive=True, group="describe")
    async def _show(self, seq: int) -> None:
        ev = await self.lookup(seq)
        text = describe_event(ev) if ev is not None else f"no event {seq}"
        box = self.query("#event")  # the dialog may have closed while the log was read
        if box:
            box.first(Label).update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        seq = self._seq(event.value)
        if seq is not None:
            self.dismiss(seq)


class ExportDialog(_Dialog):
    """Format (jsonl: every event; csv: one row per thread) and the file to write."""

    def __init__(self, session: str) -> None:
        super().__init__()
        self.session = session

    def default(self, fmt: str) -> str:
        return f"./{self.session}.{fmt}"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Export {self.session}", classes="title")
            yield Select(
                [
                    ("jsonl: every event, one JSON object a line", "jsonl"),
                    ("csv: one row per thread (cost, tokens, outcome)", "csv"),
                ],
                value="jsonl",
                allow_blank=False,
                id="format",
            )
            yield Input(value=self.default("jsonl"), id="path")
            yield Label("", classes="error", id="error")
            yield Label("enter export · escape cancel")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Export", id="export", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        path = self.query_one("#path", Input)
        others = {self.default(f) for f in ("jsonl", "csv")}
        if path.value in others:  # still a default: follow the format
            path.value = self.default(str(event.value))

    def _submit(self) -> None:
        target = self.query_one("#path", Input).value.strip()
        if not target:
            self.query_one("#error", Label).update("a file to write")
            return
        self.dismiss((str(self.query_one("#format", Select).value), target))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._submit()
        else:
            self.dismiss(None)
