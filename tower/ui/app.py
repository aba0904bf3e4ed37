"""The control tower: budget bar, thread list, inbox and live panels over the core.

The UI is a projection: it renders the reducer's TowerState on a 10 Hz timer (only what
changed, inside one batch_update) and steers tower only through the supervisor's commands.
litellm is imported in a worker thread after the first frame, never on the UI's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.theme import Theme
from textual.widgets import Footer, Input

from tower.core.bus import Bus
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.project import PROJECT_FILE, Project, ProjectError, load_project
from tower.core.state import TowerState, fold
from tower.core.store import Store, StoreError
from tower.core.supervisor import CommandError, Supervisor
from tower.ui.core_thread import CoreThread
from tower.ui.format import BurnMeter, usd
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import (
    AmountDialog,
    ArgsDialog,
    ConfirmDialog,
    GrantDialog,
    GrantRequest,
    SpawnDialog,
    SpawnRequest,
    TextDialog,
)
from tower.ui.screens.help import HelpScreen
from tower.ui.screens.policy import PolicyScreen
from tower.ui.screens.sessions import SessionsScreen
from tower.ui.themes import load_themes, theme_dirs, watch_file, watch_themes
from tower.ui.widgets.budget import BudgetBar
from tower.ui.widgets.inbox import InboxDetail, InboxList, counts_title, summary_of
from tower.ui.widgets.panels import PanelGrid
from tower.ui.widgets.rowlist import RowList
from tower.ui.widgets.threads import SORTS, ThreadList

TICK_S = 0.1
FREEZE_EVERY = 50  # ticks: 5 s
FULL_GC_EVERY = 600  # ticks: a minute, at a moment without keys
FULL_GC_LATEST = 3000  # ticks: five minutes at most
KEY_IDLE_S = 2.0
GIL_SWITCH_S = 0.001  # Python's default is 5 ms
DEFAULT_THEME = "tower-dark"
_EMPTY = TowerState()

# (id, keys, action, footer label, description). The id is what keys.toml remaps.
VERBS: list[tuple[str, str, str, str, str]] = [
    ("approve", "a", "approve", "Approve", "approve the item (budget: raise as suggested)"),
    ("deny", "d", "deny", "Deny", "deny the item (question: refuse; budget: decline)"),
    ("reply", "r", "reply", "Reply", "answer a question, or comment on the thread"),
    ("next_item", "right_square_bracket", "next_item", "Next item", "next item that needs you"),
    ("spawn", "n", "spawn", "Spawn", "spawn a thread (agent, task, model, budget)"),
    ("pause", "p", "pause", "Pause", "pause or resume the selected thread"),
    ("kill", "x", "kill", "Kill", "kill the selected thread (asks first)"),
    ("escalate", "e", "escalate", "Escalate", "move the thread to its cascade's next model"),
    ("help", "question_mark", "help", "Help", "list every key"),
    ("quit", "q", "quit", "Quit", "quit (asks while threads run; flushes the log)"),
    ("hand", "h", "hand", "To human", "hand the thread to the human (inbox item)"),
    ("edit", "E", "edit", "Edit+approve", "edit a tool call's arguments, then approve"),
    (
        "allow_like",
        "A",
        "allow_like",
        "Allow like",
        "approve, and allow calls like this for a while (a time-boxed rule)",
    ),
    ("raise_budget", "b", "raise_budget", "Budget", "raise a budget by an amount you type"),
    ("prev_item", "left_square_bracket", "prev_item", "Prev item", "previous item that needs you"),
    ("pause_all", "P", "pause_all", "Pause all", "pause or resume every thread"),
    ("filter", "slash", "filter", "Filter", "filter the thread list"),
    ("sort", "s", "sort", "Sort", "sort by the next column"),
    ("reverse", "S", "reverse", "Reverse", "reverse the sort order"),
    ("pin", "space", "pin", "Pin", "pin the thread's panel (or unpin)"),
    ("inbox", "i", "focus_inbox", "Inbox", "focus the inbox"),
    ("threads", "t", "focus_threads", "Threads", "focus the thread list"),
    ("sessions", "L", "sessions", "Sessions", "list recorded sessions (replay, resume, export)"),
    ("policy", "o", "policy", "Policy", "the rules in force, grants (revoke), MCP servers"),
    ("palette", "colon,ctrl+p", "command_palette", "Commands", "open the command palette"),
]


# Verbs with no key of their own: the palette is where they live.
PALETTE_ONLY = [
    (
        "Experiment: run the variants in experiments/ on the same tasks, side by side",
        "experiment",
        "tower experiment DIR --variants A.toml B.toml",
    ),
]


class TowerCommands(Provider):
    """Every verb in the command palette, with its key."""

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, TowerApp)
        matcher = self.matcher(query)
        for bid, _keys, action, label, description in VERBS:
            if action == "command_palette":
                continue
            text = f"{label}: {description}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(text),
                    _runner(app, action),
                    help=f"key: {app.key_of(bid)}",
                )
        for text, action, help_text in PALETTE_ONLY:
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), _runner(app, action), help=help_text)


def _runner(app: App[Any], action: str) -> Callable[[], Any]:
    async def run() -> None:
        await app.run_action(action)

    return run


class TowerApp(App[int]):
    TITLE = "tower"
    CSS = """
    Screen { layout: vertical; }
    #main { height: 3fr; }
    #left { width: 3fr; }
    #right { width: 2fr; border-left: vkey $panel-lighten-2; }
    #filter { display: none; height: 3; }
    #filter.-on { display: block; }
    ThreadList { height: 1fr; border: round $panel-lighten-2; }
    ThreadList:focus, InboxList:focus { border: round $accent; }
    InboxList { height: 1fr; border: round $panel-lighten-2; }
    PanelGrid { height: 2fr; }
    """
    COMMANDS: ClassVar = App.COMMANDS | {TowerCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(keys, action, label, id=bid, show=True) for bid, keys, action, label, _ in VERBS
    ] + [Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit_ctrl_c")]

    def __init__(
        self,
        project: Project,
        db: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        session_id: str | None = None,
        keymap: dict[str, str] | None = None,
        bell: bool = False,
        theme: str | None = None,
        watch: bool = True,
        resume: str | None = None,
        offer_resume: bool = True,
    ) -> None:
        super().__init__()
        self.project = project
        self.db = db
        self.resume_id = resume  # continue this recorded session instead of starting one
        self.offer_resume = offer_resume and resume is None
        self.now = clock
        self.session_id = session_id
        self.bell_on = bell
        self.watch = watch
        self.theme_name = theme
        self._user_keymap = keymap or {}
        self.bus: Bus | None = None
        self.sup: Supervisor | None = None
        self.store: Store | None = None
        self.note = "starting…"
        self.burn = BurnMeter()
        self.pinned: list[str] = []
        self.booted = asyncio.Event()
        self.closed = False
        self._dirty: set[str] = set()
        self._rows_dirty = True
        self._inbox_dirty = True
        self._new_items: list[Event] = []
        self._failures: list[Event] = []
        self._detail: ThreadScreen | None = None
        self._detail_events: list[Event] = []
        self.core: CoreThread | None = None
        self._last_second = -1
        self._stop_watchers = asyncio.Event()
        self.ticks = 0
        self._last_full_gc = 0
        self._last_key = 0.0

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield BudgetBar(id="budget")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(
                    placeholder="filter threads (id, agent, task, state, model)…", id="filter"
                )
                yield ThreadList(self.state, self.now, id="threads")
            with Vertical(id="right"):
                yield InboxList(self.state, self.now, id="inbox")
                yield InboxDetail(id="detail")
        yield PanelGrid(id="panels")
        yield Footer()

    def state(self) -> TowerState:
        return self.bus.state if self.bus is not None else _EMPTY

    def on_mount(self) -> None:
        # The main screen's widgets, kept: other screens (detail, dialogs) come on top of it.
        self.threads_list = self.query_one(ThreadList)
        self.inbox_list = self.query_one(InboxList)
        self.panel_grid = self.query_one(PanelGrid)
        self.budget_bar = self.query_one(BudgetBar)
        self.inbox_detail = self.query_one(InboxDetail)
        self.threads_list.border_title = "Threads"
        self.inbox_list.border_title = counts_title(_EMPTY)
        self._apply_themes(*load_themes(), first=True)
        if self._user_keymap:
            self.set_keymap(self._user_keymap)
        self.threads_list.focus()
        self._timer = self.set_interval(TICK_S, self._tick)
        self._tick()
        self._boot()
        if self.watch:
            self._watch_themes()
            self._watch_project()

    # --- themes and live reload ---------------------------------------------------------

    def _apply_themes(
        self, themes: dict[str, Theme], errors: list[str], first: bool = False
    ) -> None:
        """Registers theme files; a broken file is reported and its previous version stays."""
        for theme in themes.values():
            self.register_theme(theme)
        for error in errors:
            self.notify(error, title="theme file not loaded", severity="error", timeout=8)
        wanted = self.theme_name if first else self.theme
        if wanted in themes or (first and wanted in self.available_themes):
            self.theme = wanted  # re-applies an edited theme too
        elif first and DEFAULT_THEME in self.available_themes:
            if wanted:
                self.notify(f"no theme named {wanted!r}; using {DEFAULT_THEME}", severity="warning")
            self.theme = DEFAULT_THEME
        if not first and self.theme in themes:
            self.refresh_css()

    @work(group="watch-themes")
    async def _watch_themes(self) -> None:
        await watch_themes(theme_dirs(), self._apply_themes, self._stop_watchers)

    @work(group="watch-project")
    async def _watch_project(self) -> None:
        path = self.project.root / PROJECT_FILE
        await watch_file(path, self._reload_project, self._stop_watchers)

    async def _reload_project(self, path: Path) -> None:
        """An edited tower.toml: new agents and tasks can be spawned; a bad edit changes nothing."""
        try:
            project = await asyncio.to_thread(load_project, path.parent)
        except ProjectError as exc:
            first = exc.problems[0] if exc.problems else "invalid"
            more = f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            self.notify(
                f"{first}{more} — kept the previous version",
                title="tower.toml not reloaded",
                severity="error",
                timeout=10,
            )
            return
        self.project = project
        if self.sup is not None and self.core is not None:
            await self._command(lambda: self.sup.reload(project))  # type: ignore[union-attr]
        self.notify(
            f"{len(project.agents)} agent(s), {len(project.tasks)} task(s) ready to spawn (n); "
            "the policy and model limits apply now; MCP servers change on the next start",
            title="tower.toml reloaded",
        )

    def key_of(self, binding_id: str) -> str:
        keys = self._user_keymap.get(binding_id)
        if keys is None:
            keys = next((k for bid, k, *_ in VERBS if bid == binding_id), "")
        return ", ".join(self.get_key_display(Binding(k, "")) for k in keys.split(","))

    # --- the core -----------------------------------------------------------------------

    @work(exclusive=True, group="boot")
    async def _boot(self) -> None:
        # The core's thread holds the GIL for up to this long before the screen gets a turn.
        sys.setswitchinterval(GIL_SWITCH_S)
        self.core = CoreThread()
        self.core.start()
        if self.offer_resume:
            try:
                crashed = await self.core.run(self._crashed_session())
            except StoreError:
                crashed = None
            if crashed is not None and await self.push_screen_wait(
                ConfirmDialog(
                    f"Session {crashed} of {self.project.name} crashed with unfinished threads."
                    " Resume it instead of starting a new session?",
                    yes="Resume",
                )
            ):
                self.resume_id = crashed
        self.note = "loading models…"
        try:
            problems = await self.core.run(self._core_boot())
        except StoreError as exc:
            self.exit(return_code=2, message=Text(f"tower: {exc}"))
            return
        if problems:
            self.exit(return_code=2, message=Text("\n".join(problems)))
            return
        # litellm, pydantic and the threads' settings are alive for good: a full collection
        # walking them stalls the screen for ~150 ms, so move them out of the collector's way.
        gc.freeze()
        self.note = ""
        self.booted.set()

    async def _core_boot(self) -> list[str]:
        """On the core's loop: open the log, check the models, start the supervisor."""
        from tower.core.llm import check_model
        from tower.core.mcp import McpStartError, command_problems

        self.store = await Store.open(self.db)
        bus = Bus(self.store, clock=self.now)
        events: list[Event] = []
        if self.resume_id is not None:
            events = [ev async for ev in self.store.events(self.resume_id)]
            bus.state = fold(events)
            bus.seq = bus.state.last_seq
            self._rows_dirty = self._inbox_dirty = True
        bus.subscribe(self._on_event)
        sup = Supervisor(
            self.project,
            bus,
            session_id=self.resume_id or self.session_id,
            workspaces_dir=self.store.path.parent / "workspaces",
        )
        problems = []
        for model in self.project.all_models():
            ms = self.project.model_settings(model)
            problem = await asyncio.to_thread(check_model, model, ms.api_base, ms.api_key_env)
            if problem:
                problems.append(f"{self.project.root / PROJECT_FILE}: {problem}")
        for line in await asyncio.to_thread(command_problems, self.project):
            problems.append(f"{self.project.root / PROJECT_FILE}: {line}")
        if problems:
            await self.store.close()
            self.store = None
            return problems
        self.bus, self.sup = bus, sup
        try:
            if self.resume_id is not None:
                await sup.resume_session(events)
            else:
                await sup.start()
        except McpStartError as exc:
            return [f"tower: {exc}"]
        return []

    async def _crashed_session(self) -> str | None:
        """The newest crashed session of this project with unfinished threads, if any."""
        from tower.core.replay import state_at

        store = await Store.open(self.db)
        try:
            rows = [
                r
                for r in await store.list_sessions()
                if r.status == "crashed" and r.project == self.project.name
            ]
            for row in reversed(rows):
                if not (await state_at(store, row.id)).all_ended:
                    return row.id
            return None
        finally:
            await store.close()

    def _on_event(self, ev: Event) -> None:
        """Runs inside bus.emit: only marks what changed; drawing waits for the next tick."""
        if ev.thread is not None:
            self._dirty.add(ev.thread)
        kind = ev.kind
        if kind is EventKind.THREAD_STATE or kind is EventKind.THREAD_SPAWNED:
            self._rows_dirty = True
            if ev.payload.get("state") == ThreadState.FAILED:
                self._failures.append(ev)
        elif kind is EventKind.INBOX_OPENED:
            self._inbox_dirty = True
            self._new_items.append(ev)
        elif kind is EventKind.INBOX_CLOSED:
            self._inbox_dirty = True
        elif kind is EventKind.MCP_SERVER and ev.payload["status"] in ("crashed", "failed"):
            self._failures.append(ev)
        detail = self._detail
        if detail is not None and ev.thread == detail.thread:
            self._detail_events.append(ev)

    # --- drawing ------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.closed:
            return
        self.ticks += 1
        self._tend_garbage()
        now = self.now()
        state = self.state()
        self.burn.add(now, state.budget.spent_usd)
        second = int(now)
        threads = self.threads_list
        inbox = self.inbox_list
        with self.state_lock(), self.batch_update():
            self.budget_bar.show(state, self.burn.per_minute(), self.note)
            if self._rows_dirty or (self._dirty and threads.sort_key in ("cost", "tokens")):
                threads.rebuild()
                threads.border_title = (
                    f"Threads {len(threads.rows)}/{len(state.threads)}"
                    + (f" · filter “{threads.filter_text}”" if threads.filter_text else "")
                    + f" · sort {threads.sort_key}"
                )
            elif self._dirty or second != self._last_second:
                threads.refresh()
            if self._inbox_dirty:
                inbox.rebuild()
                inbox.border_title = counts_title(state)
                self._show_item()
            elif second != self._last_second:
                inbox.refresh()
                self._show_item()
            self._draw_panels(state)
        self._feed_detail()
        self._last_second = second
        self._dirty.clear()
        self._rows_dirty = False
        self._inbox_dirty = False
        self._notify_pending(state)

    def state_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held while the UI walks the state, so the core never changes it mid-walk."""
        return self.bus.lock if self.bus is not None else contextlib.nullcontext()

    def _feed_detail(self) -> None:
        detail = self._detail
        if detail is None or not self._detail_events:
            return
        events, self._detail_events = self._detail_events, []
        if detail.is_attached:
            detail.add_events(events)
        else:
            self._detail = None

    def _tend_garbage(self) -> None:
        """Keeps full garbage collections off the keyboard's path.

        Long-lived objects (thread histories, litellm's caches) pile up, and a full collection
        walking them stalls a frame for 50-150 ms. Frozen objects are skipped, so they are
        frozen every few seconds; once a minute, when no key was pressed for a while, they
        are unfrozen and collected for real so cyclic garbage cannot pile up.
        """
        if self.ticks % FREEZE_EVERY == 0:
            gc.freeze()
        due = self.ticks - self._last_full_gc
        idle = time.monotonic() - self._last_key > KEY_IDLE_S
        if due >= FULL_GC_EVERY and (idle or due >= FULL_GC_LATEST):
            self._last_full_gc = self.ticks
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_key = time.monotonic()
        await super().on_event(event)

    def _panel_targets(self) -> list[str]:
        threads = self.threads_list
        count = self.panel_grid.panel_count()
        out = [t for t in self.pinned if t in self.state().threads][:count]
        rows = threads.rows
        start = min(threads.cursor, max(len(rows) - 1, 0))
        order = rows[start:] + rows[:start][::-1]
        for tid in order:
            if len(out) >= count:
                break
            if tid not in out:
                out.append(tid)
        return out

    def _draw_panels(self, state: TowerState) -> None:
        grid = self.panel_grid
        panels = grid.ensure_panels()
        targets = self._panel_targets()
        selected = self.threads_list.current
        for i, panel in enumerate(panels):
            tid = targets[i] if i < len(targets) else None
            if tid is None:
                if panel.thread is not None:
                    panel.show(None, False, False)
                continue
            view = state.threads[tid]
            marks = (tid == selected, tid in self.pinned)
            if tid in self._dirty or panel.thread != tid or getattr(panel, "_marks", None) != marks:
                panel.show(view, *marks)
                panel._marks = marks  # type: ignore[attr-defined]

    def _show_item(self) -> None:
        key = self.inbox_list.current
        state = self.state()
        item = state.inbox.get(key) if key else None
        agent = state.threads[item.thread].agent if item and item.thread in state.threads else ""
        self.inbox_detail.show(item, self.now(), agent)

    def _notify_pending(self, state: TowerState) -> None:
        """Toasts only for what needs the human: new inbox items, budget stops, failures."""
        items, failures = self._new_items, self._failures
        self._new_items, self._failures = [], []
        if not items and not failures:
            return
        budget = [e for e in items if e.payload["kind"] == InboxKind.BUDGET]
        others = [e for e in items if e.payload["kind"] != InboxKind.BUDGET]
        if len(others) <= 3:
            for ev in others:
                item = state.inbox.get(ev.payload["item"])
                what = summary_of(item) if item else ev.payload["kind"]
                what = what if len(what) <= 70 else what[:69] + "…"
                self.notify(
                    f"{ev.thread}: {what}",
                    title=f"needs you · {ev.payload['kind']}",
                    severity="warning",
                    timeout=4,
                )
        else:
            self.notify(
                f"{len(others)} new items need you (] to go through them)",
                title="inbox",
                severity="warning",
            )
        if budget:
            names = ", ".join(e.thread or "" for e in budget[:3])
            more = f" and {len(budget) - 3} more" if len(budget) > 3 else ""
            self.notify(
                f"{names}{more} cannot reserve their next call",
                title="budget stop",
                severity="error",
            )
        for ev in [e for e in failures if e.kind is EventKind.MCP_SERVER]:
            p = ev.payload
            again = "restarting" if p["status"] == "crashed" else "stopped; o shows servers"
            self.notify(
                f"{p['server']}: {str(p.get('detail', ''))[:100]} ({again})",
                title=f"MCP server {p['status']}",
                severity="error",
            )
        failures = [e for e in failures if e.kind is not EventKind.MCP_SERVER]
        if failures:
            for ev in failures[:3]:
                reason = str(ev.payload.get("reason", ""))[:100]
                self.notify(f"{ev.thread}: {reason}", title="thread failed", severity="error")
            if len(failures) > 3:
                self.notify(f"{len(failures) - 3} more threads failed", severity="error")
        if self.bell_on:
            self.bell()

    # --- selection helpers --------------------------------------------------------------

    def selected_thread(self) -> str | None:
        if isinstance(self.screen, ThreadScreen):
            return self.screen.thread
        return self.threads_list.current

    def current_item(self) -> str | None:
        """The focused inbox item, else the oldest item of the selected thread."""
        state = self.state()
        inbox = self.inbox_list
        if inbox.has_focus and inbox.current in state.inbox:
            return inbox.current
        tid = self.selected_thread()
        for item in list(state.inbox.values()):  # a snapshot: the core adds items meanwhile
            if item.thread == tid:
                return item.id
        return None  # never another thread's item: verbs act on what is selected

    async def _command(self, fn: Callable[[], Any], done: str | None = None) -> Any:
        """Runs a supervisor command on the core's loop; a refusal is a toast, never a crash."""
        if self.closed:
            return None  # keys typed while quitting: the core has stopped
        if self.sup is None or self.core is None:
            self.notify("still starting…", severity="warning")
            return None
        try:
            result = await self.core.call(fn)
        except CommandError as exc:
            self.notify(str(exc), severity="error")
            return None
        if done:
            self.notify(done, timeout=2)
        self._rows_dirty = self._inbox_dirty = True
        return result

    def _need_thread(self) -> str | None:
        tid = self.selected_thread()
        if tid is None:
            self.notify("no thread selected", severity="warning")
        return tid

    def _need_item(self) -> str | None:
        item = self.current_item()
        if item is None:
            self.notify("nothing in the inbox for this thread", severity="warning")
        return item

    # --- verbs --------------------------------------------------------------------------

    def action_spawn(self) -> None:
        if self.sup is None:
            self.notify("still starting…", severity="warning")
            return
        project = self.sup.project
        models = project.all_models()
        tasks = [(t.title or t.id, t.prompt) for t in project.tasks]

        async def spawn(req: SpawnRequest | None) -> None:
            if req is None or self.sup is None:
                return
            tid = await self._command(
                lambda: self.sup.spawn(  # type: ignore[union-attr]
                    req.agent, req.prompt, model=req.model, budget_usd=req.budget_usd
                )
            )
            if tid:
                self.notify(f"spawned {tid}", timeout=2)
                self._rows_dirty = True
                self.call_after_refresh(lambda: self.threads_list.select_key(tid))

        self.push_screen(SpawnDialog([a.name for a in project.agents], models, tasks), spawn)

    async def action_pause(self) -> None:
        tid = self._need_thread()
        if tid is None or self.sup is None:
            return
        run = self.sup.runs.get(tid)
        if run is not None and run.pause_requested:
            await self._command(lambda: self.sup.resume(tid), f"resumed {tid}")  # type: ignore[union-attr]
        else:
            await self._command(lambda: self.sup.pause(tid), f"pausing {tid}")  # type: ignore[union-attr]

    async def action_pause_all(self) -> None:
        if self.sup is None:
            return
        live = [r for r in list(self.sup.runs.values()) if not r.ended]
        if live and all(r.pause_requested for r in live):
            await self._command(self.sup.resume_all, f"resumed {len(live)} thread(s)")
        else:
            await self._command(self.sup.pause_all, f"pausing {len(live)} thread(s)")

    def action_kill(self) -> None:
        tid = self._need_thread()
        if tid is None:
            return

        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self._command(lambda: self.sup.kill(tid), f"killed {tid}")  # type: ignore[union-attr]

        self.push_screen(ConfirmDialog(f"Kill thread {tid}?", yes="Kill"), confirmed)

    async def action_escalate(self) -> None:
        tid = self._need_thread()
        if tid is None or self.sup is None:
            return
        result = await self._command(lambda: self.sup.escalate(tid, "model"))  # type: ignore[union-attr]
        if result and str(result).startswith("i"):
            self.notify(f"{tid}: no stronger model left — handed to you ({result})")
        elif result:
            self.notify(f"{tid} escalated to {result}", timeout=2)

    async def action_hand(self) -> None:
        tid = self._need_thread()
        if tid is not None:
            await self._command(
                lambda: self.sup.escalate(tid, "human"),  # type: ignore[union-attr]
                f"{tid} handed to you: it stops at its next checkpoint",
            )

    def _kind(self, item: str) -> InboxKind | None:
        found = self.state().inbox.get(item)
        return found.kind if found else None

    async def action_approve(self) -> None:
        item = self._need_item()
        if item is None or self.sup is None:
            return
        kind = self._kind(item)
        if kind is InboxKind.BUDGET:
            await self._command(lambda: self.sup.raise_budget(item), "budget raised")  # type: ignore[union-attr]
        elif kind is InboxKind.QUESTION:
            self.action_reply()
        else:
            await self._command(lambda: self.sup.approve(item), f"approved {item}")  # type: ignore[union-attr]

    async def action_deny(self) -> None:
        item = self._need_item()
        if item is not None:
            await self._command(lambda: self.sup.deny(item), f"denied {item}")  # type: ignore[union-attr]

    def action_edit(self) -> None:
        item = self._need_item()
        if item is None:
            return
        found = self.state().inbox[item]
        if found.kind is not InboxKind.APPROVAL:
            self.notify("only a tool call's arguments can be edited", severity="warning")
            return

        async def edited(args: dict[str, Any] | None) -> None:
            if args is not None:
                await self._command(
                    lambda: self.sup.approve(item, args=args),  # type: ignore[union-attr]
                    f"approved {item} with edited arguments",
                )

        self.push_screen(
            ArgsDialog(str(found.data.get("tool")), found.data.get("args", {})), edited
        )

    def action_reply(self) -> None:
        item = self.current_item()
        tid = self.selected_thread()
        if item is None and tid is None:
            self.notify("no thread selected", severity="warning")
            return
        found = self.state().inbox.get(item) if item else None
        if found is not None and found.kind is InboxKind.QUESTION:
            title = f"{found.thread} asks: {found.data.get('question', '')}"
            target = item
        elif found is not None and found.kind is InboxKind.ESCALATION:
            title = f"Guidance for {found.thread}"
            target = item
        elif found is not None and found.kind is InboxKind.APPROVAL:
            title = f"Approve {found.data.get('tool')} for {found.thread} with a comment"
            target = item
        else:
            title = f"Comment to {tid} (read before its next model call)"
            target = tid

        async def send(text: str | None) -> None:
            if text and target:
                await self._command(lambda: self.sup.reply(target, text), "sent")  # type: ignore[union-attr]

        self.push_screen(TextDialog(title), send)

    def action_allow_like(self) -> None:
        item = self._need_item()
        if item is None or self.sup is None:
            return
        with self.state_lock():
            found = self.state().inbox.get(item)
            view = self.state().threads.get(found.thread) if found else None
            data = dict(found.data) if found else {}
        if found is None or view is None:
            return
        if found.kind is not InboxKind.APPROVAL or "tool" not in data:
            self.notify("allow-like-this works on tool approvals", severity="warning")
            return
        if data.get("interrupted"):
            self.notify("an interrupted call is decided on its own: a or d", severity="warning")
            return
        tool = str(data["tool"])
        agent = view.agent
        suggest = dict(data.get("suggest") or {})

        async def chosen(req: GrantRequest | None) -> None:
            if req is None:
                return
            rid = await self._command(
                lambda: self.sup.grant(  # type: ignore[union-attr]
                    tool, req.args, agent=req.agent, minutes=req.minutes, item=item
                )
            )
            if rid is not None:
                scope = f"agent {req.agent}" if req.agent else "every agent"
                globs = " ".join(f"{k}={v}" for k, v in req.args.items())
                self.notify(
                    f"allowed {tool} {globs} for {scope} for {req.minutes:g} min ({rid}); "
                    "o shows the policy",
                    timeout=4,
                )

        self.push_screen(GrantDialog(tool, suggest, agent), chosen)

    def action_raise_budget(self) -> None:
        if self.sup is None:
            return
        item = self.current_item()
        found = self.state().inbox.get(item) if item else None
        if found is not None and found.kind is InboxKind.BUDGET:
            title = f"Raise the {found.data.get('scope')} budget for {found.thread} by (USD)"
            suggestion = float(found.data.get("suggest_usd") or 0.01)
            target: str | None = item
        else:
            title = "Raise the session budget by (USD)"
            suggestion = max((self.state().budget.limit_usd or 0.0) * 0.25, 0.01)
            target = None

        async def raised(amount: float | None) -> None:
            if amount:
                await self._command(
                    lambda: self.sup.raise_budget(target, usd=amount),  # type: ignore[union-attr]
                    f"budget raised by {usd(amount)}",
                )

        self.push_screen(AmountDialog(title, suggestion), raised)

    def _jump(self, step: int) -> None:
        inbox = self.inbox_list
        keys = inbox.rows
        if not keys:
            self.notify("nothing needs you", timeout=2)
            return
        current = inbox.current
        index = keys.index(current) if current in keys else -1
        if not inbox.has_focus and index >= 0:
            step = 0  # coming from elsewhere: land on the selected item first
        index = (index + step) % len(keys)
        inbox.cursor = index
        item = self.state().inbox.get(keys[index])
        if item is not None:
            threads = self.threads_list
            if not threads.select_key(item.thread) and threads.filter_text:
                threads.filter_text = ""
                with self.state_lock():
                    threads.rebuild()
                threads.select_key(item.thread)
        self._show_item()
        inbox.focus()

    def action_next_item(self) -> None:
        self._jump(1)

    def action_prev_item(self) -> None:
        self._jump(-1)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-on")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        threads = self.threads_list
        threads.filter_text = event.value.strip()
        self._rows_dirty = True

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.threads_list.focus()

    def key_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_focus or box.value:
            box.value = ""
            box.remove_class("-on")
            self.threads_list.focus()

    def action_sort(self) -> None:
        threads = self.threads_list
        threads.sort_key = SORTS[(SORTS.index(threads.sort_key) + 1) % len(SORTS)]
        self._rows_dirty = True

    def action_reverse(self) -> None:
        threads = self.threads_list
        threads.reverse = not threads.reverse
        self._rows_dirty = True

    def action_pin(self) -> None:
        tid = self._need_thread()
        if tid is None:
            return
        if tid in self.pinned:
            self.pinned.remove(tid)
        else:
            self.pinned.insert(0, tid)
        self._dirty.add(tid)

    async def action_sessions(self) -> None:
        store, core = self.store, self.core
        if store is None or core is None or self.closed:
            self.notify("still starting…", severity="warning")
            return
        rows = await core.run(store.list_sessions())
        current = self.sup.session_id if self.sup is not None else None
        self.push_screen(SessionsScreen(rows, current))

    def action_policy(self) -> None:
        if self.sup is None or self.core is None:
            self.notify("still starting…", severity="warning")
            return

        def read(fn: Callable[[TowerState], Any]) -> Any:
            with self.state_lock():
                return fn(self.state())

        async def revoke(rid: str) -> None:
            await self._command(
                lambda: self.sup.revoke(rid),  # type: ignore[union-attr]
                f"revoked {rid}",
            )

        self.push_screen(PolicyScreen(read, self.now, revoke))

    def action_experiment(self) -> None:
        from tower.ui.screens.experiment import ExperimentScreen, variant_files

        if self.core is None or self.store is None:
            self.notify("still starting…", severity="warning")
            return
        variants = variant_files(self.project.root)
        if len(variants) < 2:
            self.notify(
                f"an experiment needs two or more variant files in "
                f"{self.project.root / 'experiments'} (found {len(variants)})",
                severity="warning",
            )
            return
        self.push_screen(ExperimentScreen(self.project.root, variants, self.db, self.core))

    def action_focus_inbox(self) -> None:
        self.inbox_list.focus()

    def action_focus_threads(self) -> None:
        self.threads_list.focus()

    def action_help(self) -> None:
        rows = [(self.key_of(bid), bid, desc) for bid, _k, _a, _l, desc in VERBS]
        rows += [
            ("enter", "-", "open the selected thread: transcript and cost per step"),
            ("tab", "-", "cycle focus: threads, inbox"),
            ("escape", "-", "back / close"),
        ]
        self.push_screen(HelpScreen(rows))

    @on(RowList.Highlighted)
    def _highlighted(self, event: RowList.Highlighted) -> None:
        if isinstance(event.rowlist, InboxList):
            self._show_item()
        else:
            self._dirty.update(self._panel_targets())

    @on(RowList.Selected)
    async def _open(self, event: RowList.Selected) -> None:
        key = event.key
        if isinstance(event.rowlist, InboxList):
            item = self.state().inbox.get(key or "")
            key = item.thread if item else None
        if key is not None:
            await self.open_thread(key)

    async def open_thread(self, tid: str) -> None:
        """The detail view: past events from the log, then live ones as they come."""
        if self.store is None or self.sup is None:
            return
        screen = ThreadScreen(tid)
        await self.push_screen(screen)
        self._detail_events = []
        self._detail = screen  # live events from now on are queued for it
        events = await self.thread_events(tid)
        seen = events[-1].seq if events else 0
        screen.add_events(events)
        self._detail_events = [e for e in self._detail_events if e.seq > seen]
        view = self.state().threads.get(tid)
        if view is not None:
            screen.show_head(
                Text(
                    f"{view.id} · {view.agent} · {view.state} {view.reason} · {view.model}"
                    f" · step {view.step} · {usd(view.cost_usd)}\n{view.title}"
                )
            )
        self._detail = screen

    async def thread_events(self, tid: str) -> list[Event]:
        """A thread's events as the log has them, read on the core's loop."""
        store, sup, core = self.store, self.sup, self.core
        if store is None or sup is None or core is None or self.closed:
            return []

        async def read() -> list[Event]:
            await store.flush()
            return [ev async for ev in store.thread_events(sup.session_id, tid)]

        return await core.run(read())

    def detail_closed(self, screen: ThreadScreen) -> None:
        if self._detail is screen:
            self._detail = None

    # --- leaving ------------------------------------------------------------------------

    async def action_quit(self) -> None:
        live = [t for t in list(self.state().threads.values()) if not t.state.ended]
        if not live:
            await self.shutdown()
            self.exit(0)
            return

        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self.shutdown()
                self.exit(0)

        self.push_screen(
            ConfirmDialog(
                f"{len(live)} thread(s) have not finished. Quit? They stop now; the log keeps "
                "everything.",
                yes="Quit",
            ),
            confirmed,
        )

    async def shutdown(self) -> None:
        """Stops the threads and closes the log; every emitted event is committed."""
        if self.closed:
            return
        self.closed = True
        self._timer.stop()
        self._stop_watchers.set()
        core = self.core
        if core is None:
            return
        sup, store = self.sup, self.store

        async def close() -> None:
            try:
                if sup is not None:
                    await sup.close("quit")
            finally:
                if store is not None:
                    await store.close()

        try:
            await core.run(close())
        finally:
            core.stop()

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            await self.shutdown()
