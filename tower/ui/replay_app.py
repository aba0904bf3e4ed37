"""`tower replay SESSION`: the main screen, read-only, driven through a recorded session.

It reuses the live screen's widgets over a Replayer's state (the same reducer), with the
replay clock as "now": ages and waits read as they did at that moment.

The replay is a screen, `ReplayScreen`: `ReplayApp` (the `tower replay` command) shows it on
its own, and the live tower pushes it from the sessions list (`L`, enter) over the running
session, which carries on underneath; escape pops it. It is modal, so none of the live
tower's verbs reach through it, and it reads the log through its own connection.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from tower.core.events import EventKind, Resolution
from tower.core.payloads import InboxClosed, payload_of
from tower.core.progress import RateMeter, ended_count
from tower.core.replay import MARK_KINDS, Replayer, resolve_session
from tower.core.state import TowerState
from tower.core.store import Store
from tower.ui.format import BurnMeter
from tower.ui.screens.dialogs import TextDialog
from tower.ui.themes import load_themes
from tower.ui.widgets.budget import BudgetBar
from tower.ui.widgets.inbox import InboxDetail, InboxList, counts_title
from tower.ui.widgets.panels import PanelGrid
from tower.ui.widgets.rowlist import RowList
from tower.ui.widgets.threads import ThreadList

SPEEDS = (1, 2, 4, 8, 16, 32, 64)
TICK_S = 0.1
MARK_STYLE = {
    "approval": ("a", "yellow"),
    "escalation": ("e", "magenta"),
    "budget": ("$", "red"),
    "failure": ("✗", "bold red"),
}


def parse_target(text: str, first_ts: float) -> tuple[str, float]:
    """'#120' or '120' → event 120; '2m30s', '90s', '1h' → time from the start."""
    text = text.strip().lower()
    if text.lstrip("#").isdigit():
        return "seq", float(text.lstrip("#"))
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or match is None:
        raise ValueError(f"not an event number or a time: {text!r}")
    h, m, sec = (float(x) if x else 0.0 for x in match.groups())
    return "ts", first_ts + h * 3600 + m * 60 + sec


class Timeline(Static):
    """Where we are in the session, and where the approvals, escalations, budget stops and
    failures happened."""

    DEFAULT_CSS = "Timeline { height: 2; padding: 0 1; background: $panel; }"

    def show(self, rp: Replayer, playing: bool, speed: int, follow: str | None) -> None:
        width = max(self.size.width - 2, 10)
        cells = ["─"] * width
        styles: list[str | None] = [None] * width
        for seq, mark in rp.marks:
            x = min(int((seq - 1) / max(rp.last, 1) * width), width - 1)
            cells[x], styles[x] = MARK_STYLE[mark]
        cursor = min(int((rp.pos - 1) / max(rp.last, 1) * width), width - 1) if rp.pos else 0
        line = Text()
        for x, (ch, st) in enumerate(zip(cells, styles, strict=True)):
            line.append("█" if x == cursor else ch, "bold reverse" if x == cursor else st)
        elapsed = rp.state.last_ts - rp.first_ts if rp.pos else 0.0
        info = Text(
            f"{'▶ playing' if playing else '⏸ paused'} {speed}× · event {rp.pos:,}/{rp.last:,}"
            f" · {elapsed:,.1f}s of {rp.last_ts - rp.first_ts:,.1f}s"
            + (f" · following {follow}" if follow else "")
            + "   "
            + " ".join(f"{MARK_STYLE[k][0]} {k}" for k in MARK_KINDS)
            + "   (read-only replay)",
            no_wrap=True,
            overflow="ellipsis",
        )
        self.update(Text("\n").join([line, info]), layout=False)


# The keys the row list binds itself (they replace a scroll view's).
_ROW_KEYS = {k for b in RowList.BINDINGS if isinstance(b, Binding) for k in b.key.split(",")}


class ReplayThreadList(ThreadList, inherit_bindings=False):
    """The thread list, drawn as a tree, without the keys that fold it: left and right step
    through the events here. Its other keys are the list's own (a scroll view's, then the
    row list's), as before trees."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            b
            for b in ScrollableContainer.BINDINGS
            if isinstance(b, Binding) and not set(b.key.split(",")) & _ROW_KEYS
        ),
        *RowList.BINDINGS,
    ]


class ReplayScreen(ModalScreen[None]):
    """A recorded session, scrub-able. `standalone`: closing it ends the app (exit code 0;
    2 when the session cannot be opened) instead of returning to the screen below."""

    DEFAULT_CSS = """
    ReplayScreen { layout: vertical; background: $background; }
    ReplayScreen #main { height: 3fr; }
    ReplayScreen #left { width: 3fr; }
    ReplayScreen #right { width: 2fr; }
    ReplayScreen ThreadList, ReplayScreen InboxList {
        height: 1fr; border: round $panel-lighten-2;
    }
    ReplayScreen ThreadList:focus, ReplayScreen InboxList:focus { border: round $accent; }
    ReplayScreen PanelGrid { height: 2fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "play", "Play/pause", id="replay_play"),
        Binding("right", "step(1)", "Next event", id="replay_next"),
        Binding("left", "step(-1)", "Prev event", id="replay_prev"),
        Binding("shift+right", "jump_seconds(10)", "+10 s", id="replay_fwd"),
        Binding("shift+left", "jump_seconds(-10)", "-10 s", id="replay_back"),
        Binding("plus,equals_sign", "speed(1)", "Faster", id="replay_faster"),
        Binding("minus", "speed(-1)", "Slower", id="replay_slower"),
        Binding("g", "goto", "Go to", id="replay_goto"),
        Binding("t", "follow", "Follow thread", id="replay_follow"),
        Binding("tab", "app.focus_next", "Focus", show=False),
        Binding("escape,q", "close", "Close", id="replay_quit"),
    ]

    def __init__(self, db: str | Path | None, session: str, standalone: bool = False) -> None:
        super().__init__()
        self.db = db
        self.session_ref = session
        self.standalone = standalone
        # Over the live tower it is modal (the tower's verbs must not reach through it); on
        # its own the app's keys (the command palette) stay available, as on any screen.
        self._modal = not standalone
        self.rp: Replayer | None = None
        self.store: Store | None = None
        self.playing = False
        self.speed_i = 0
        self.follow: str | None = None
        self.burn = BurnMeter()
        self.pace = RateMeter()  # threads ended per second of the session's own time
        self._busy = False

    def state(self) -> TowerState:
        return self.rp.state if self.rp is not None else TowerState()

    def now(self) -> float:
        return self.rp.state.last_ts if self.rp is not None else 0.0

    def compose(self) -> ComposeResult:
        yield BudgetBar(id="budget")
        yield Timeline(id="timeline")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ReplayThreadList(self.state, self.now, id="threads")
            with Vertical(id="right"):
                yield InboxList(self.state, self.now, id="inbox")
                yield InboxDetail(id="detail")
        yield PanelGrid(id="panels")
        yield Footer()

    def on_mount(self) -> None:
        self.threads = self.query_one(ThreadList)
        self.inbox = self.query_one(InboxList)
        self.threads.focus()
        self._open()
        self.set_interval(TICK_S, self._tick)

    @work(exclusive=True, group="open")
    async def _open(self) -> None:
        from tower.core.replay import ReplayError
        from tower.core.store import StoreError

        try:
            self.store = await Store.open(self.db)
            session = await resolve_session(self.store, self.session_ref)
            rp = Replayer(self.store, session)
            await rp.open()
        except (StoreError, ReplayError) as exc:
            if self.store is not None:
                await self.store.close()
                self.store = None
            if self.standalone:
                self.app.exit(return_code=2, message=Text(f"tower: {exc}"))
            else:
                self.app.notify(f"cannot replay: {exc}", severity="error")
                self.dismiss(None)
            return
        self.rp = rp
        self.draw()

    def action_close(self) -> None:
        if self.standalone:
            self.app.exit(0)
        else:
            self.dismiss(None)

    # --- drawing ------------------------------------------------------------------------

    def draw(self) -> None:
        rp = self.rp
        if rp is None:
            return
        state = rp.state
        with self.app.batch_update():
            self.query_one(BudgetBar).show(
                state,
                self.burn.per_minute(),
                "replay",
                thread=self.threads.current,
                ended_per_s=self.pace.per_second(),
            )
            self.query_one(Timeline).show(rp, self.playing, SPEEDS[self.speed_i], self.follow)
            self.threads.rebuild()
            self.threads.border_title = f"Threads {len(state.threads)}"
            self.inbox.rebuild()
            self.inbox.border_title = counts_title(state)
            key = self.inbox.current
            item = state.inbox.get(key) if key else None
            agent = (
                state.threads[item.thread].agent if item and item.thread in state.threads else ""
            )
            self.query_one(InboxDetail).show(
                item, self.now(), agent, hint="a replay: what was decided shows as it happened"
            )
            grid = self.query_one(PanelGrid)
            panels = grid.ensure_panels()
            rows = self.threads.rows
            start = min(self.threads.cursor, max(len(rows) - 1, 0))
            targets = ([self.follow] if self.follow in state.threads else []) + [
                t for t in rows[start:] + rows[:start] if t != self.follow
            ]
            for panel, tid in zip(panels, targets + [None] * len(panels), strict=False):
                view = state.threads.get(tid) if tid else None
                panel.show(view, tid == self.threads.current, tid == self.follow)

    @on(RowList.Highlighted)
    def _moved(self) -> None:
        self.draw()

    # --- playing ------------------------------------------------------------------------

    async def _tick(self) -> None:
        rp = self.rp
        if rp is None or not self.playing or self._busy:
            return
        if rp.pos >= rp.last:
            self.playing = False
            self.draw()
            return
        self._busy = True
        try:
            until = rp.state.last_ts + TICK_S * SPEEDS[self.speed_i]
            applied = await rp.forward(5000, until_ts=until)
            if not applied:  # a quiet stretch: jump to the next event
                applied = await rp.forward(1)
            self._announce(applied)
            if rp.pos >= rp.last:
                self.playing = False  # the end of the session
        finally:
            self._busy = False
        self.burn.add(rp.state.last_ts, rp.state.budget.spent_usd)
        self.pace.add(rp.state.last_ts, ended_count(rp.state))
        self.draw()

    def _announce(self, events: list) -> None:
        """Each decision as it was made: by whom, and how long it waited."""
        decided = [
            (ev, p)
            for ev in events
            if ev.kind is EventKind.INBOX_CLOSED
            and isinstance(p := payload_of(ev), InboxClosed)
            and p.resolution != Resolution.DROPPED
        ]
        for ev, p in decided[:3]:
            extra = f" after {p.waited_s:.0f}s" if p.waited_s else ""
            self.app.notify(
                f"{ev.thread}: {p.item} {p.resolution} by {p.by}{extra}",
                title="decision",
                timeout=3,
            )

    async def action_play(self) -> None:
        rp = self.rp
        if rp is not None and not self.playing and rp.pos >= rp.last:
            await rp.seek(1)  # play at the end starts over
        self.playing = not self.playing
        self.draw()

    async def action_step(self, n: int) -> None:
        rp = self.rp
        if rp is None:
            return
        self.playing = False
        if n > 0:
            self._announce(await rp.forward(n))
        else:
            await rp.seek(rp.pos + n)
        self.draw()

    async def action_jump_seconds(self, seconds: float) -> None:
        rp = self.rp
        if rp is None:
            return
        await rp.seek_time(rp.state.last_ts + seconds)
        self.draw()

    def action_speed(self, delta: int) -> None:
        self.speed_i = max(0, min(len(SPEEDS) - 1, self.speed_i + delta))
        self.draw()

    def action_goto(self) -> None:
        async def go(text: str | None) -> None:
            rp = self.rp
            if not text or rp is None:
                return
            try:
                kind, value = parse_target(text, rp.first_ts)
            except ValueError as exc:
                self.app.notify(str(exc), severity="error")
                return
            if kind == "seq":
                await rp.seek(int(value))
            else:
                await rp.seek_time(value)
            self.draw()

        self.app.push_screen(TextDialog("Go to an event number (#120) or a time (2m30s)"), go)

    def action_follow(self) -> None:
        tid = self.threads.current
        self.follow = None if self.follow == tid else tid
        self.draw()

    async def on_unmount(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


class ReplayApp(App[int]):
    """`tower replay SESSION`: a ReplayScreen on its own, in tower's theme."""

    TITLE = "tower replay"

    def __init__(self, db: str | Path | None, session: str) -> None:
        super().__init__()
        self.replay = ReplayScreen(db, session, standalone=True)

    def on_mount(self) -> None:
        themes, _errors = load_themes()
        for theme in themes.values():
            self.register_theme(theme)
        if "tower-dark" in self.available_themes:
            self.theme = "tower-dark"

    def get_default_screen(self) -> Screen[Any]:
        return self.replay  # the app's own queries (app.query_one) reach its widgets

    # The screen's cursor, for scripts and tests that drive the app.
    @property
    def rp(self) -> Replayer | None:
        return self.replay.rp

    @property
    def playing(self) -> bool:
        return self.replay.playing

    @property
    def speed_i(self) -> int:
        return self.replay.speed_i

    @property
    def follow(self) -> str | None:
        return self.replay.follow

    def state(self) -> TowerState:
        return self.replay.state()
