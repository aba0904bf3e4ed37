"""The control tower: budget bar, thread list, inbox and live panels over the core.

The UI is a projection: it renders the reducer's TowerState on a 10 Hz timer (only what
changed, inside one batch_update) and steers tower only through a Control (core/control.py),
never the supervisor itself. The session is opened and closed by the composition root
(core/session.py) on the core's thread; the bus's subscriber there only queues each event,
and the UI thread reads the queue on its tick, so no UI code runs on the core's thread.
litellm is imported in a worker thread after the first frame, never on the UI's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingsMap, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.theme import Theme
from textual.widgets import Footer, Input

from tower.core import payloads as pl
from tower.core.attention import AttentionClock
from tower.core.control import CallFigures, CommandError, Control
from tower.core.events import ENDED_STATES, Event, EventKind, InboxKind, ThreadState
from tower.core.payloads import InboxOpened, McpServer, ThreadStateChanged, payload_as, payload_of
from tower.core.progress import RateMeter, ended_count
from tower.core.project import (
    PROJECT_FILE,
    Project,
    ProjectError,
    load_project,
    reload_words,
)
from tower.core.remote import RemoteControl
from tower.core.session import SESSION_ERRORS, PreflightError, SessionRuntime
from tower.core.situations import Situation, is_routine
from tower.core.state import TowerState, subtree
from tower.core.store import Store, StoreError
from tower.core.supervisor import Supervisor
from tower.core.watch import watch_file
from tower.core.wire import ServiceError
from tower.ui.core_thread import CoreThread
from tower.ui.format import BurnMeter, usd
from tower.ui.keymap import ConfigError, load_config, validate_keys
from tower.ui.notify import Notifications, NotifyConfig
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import (
    AmountDialog,
    ArgsDialog,
    ChoiceDialog,
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
from tower.ui.themes import load_themes, theme_dirs, watch_themes
from tower.ui.widgets.budget import BudgetBar
from tower.ui.widgets.inbox import InboxDetail, InboxList, counts_title, summary_of
from tower.ui.widgets.panels import PanelGrid
from tower.ui.widgets.rowlist import RowList
from tower.ui.widgets.selection import (
    SelectionBar,
    Target,
    budget_amount,
    hints_for,
    target_label,
)
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
    ("deny_reason", "D", "deny_reason", "Deny+reason", "deny with a reason the agent reads"),
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
    ("files", "w", "files", "Files", "the files the thread wrote, with diffs (workspace path)"),
    ("palette", "colon,ctrl+p", "command_palette", "Commands", "open the command palette"),
    # Sub-agents: the same verbs on the selected thread's whole subtree (p, x, e act on it
    # alone).
    (
        "pause_tree",
        "Z",
        "pause_tree",
        "Pause tree",
        "pause the selected thread and its sub-agents (or resume them all)",
    ),
    (
        "kill_tree",
        "X",
        "kill_tree",
        "Kill tree",
        "kill the selected thread and its sub-agents (asks first)",
    ),
    (
        "escalate_tree",
        "U",
        "escalate_tree",
        "Escalate tree",
        "move each thread of the selected subtree to its cascade's next model",
    ),
]


# Verbs left out of the footer, so the ones used most fit in it (the line above the footer
# names the keys for what is selected; `?` and the palette list every verb).
FOOTER_HIDDEN = frozenset(
    {
        "hand",
        "edit",
        "allow_like",
        "raise_budget",
        "prev_item",
        "pause_all",
        "filter",
        "sort",
        "reverse",
        "pin",
        "inbox",
        "threads",
        "policy",
        "pause_tree",
        "kill_tree",
        "escalate_tree",
    }
)

# Verbs with no key of their own: the palette is where they live.
PALETTE_ONLY = [
    (
        "Experiment: run the variants in experiments/ on the same tasks, side by side",
        "experiment",
        "tower experiment DIR --variants A.toml B.toml",
    ),
]


class TowerCommands(Provider):
    """The palette: tower's own verbs first, then themes, then recorded sessions.

    One provider yields all three in that order, so an empty query (discovery) lists them
    in that order too; Textual's generic commands are left out (quit, help and themes are
    tower verbs here).
    """

    async def startup(self) -> None:
        app = self.app
        assert isinstance(app, TowerApp)
        self._sessions: list[Any] = []
        if app.store is not None and app.core is not None and not app.closed:
            with contextlib.suppress(Exception):
                self._sessions = list(reversed(await app.core.run(app.store.list_sessions())))

    def _entries(self) -> list[tuple[str, Callable[[], Any], str]]:
        app = self.app
        assert isinstance(app, TowerApp)
        out: list[tuple[str, Callable[[], Any], str]] = []
        for bid, _keys, action, label, description in VERBS:
            if action == "command_palette":
                continue
            out.append((f"{label}: {description}", _runner(app, action), f"key: {app.key_of(bid)}"))
        for text, action, help_text in PALETTE_ONLY:
            out.append((text, _runner(app, action), help_text))
        # tower's own themes first, then Textual's; the one in use says so.
        names = sorted(
            (n for n in app.available_themes if n != "textual-ansi"),
            key=lambda n: (not n.startswith("tower"), n),
        )
        for name in names:
            note = "the theme in use" if name == app.theme else "switch the colour theme"
            out.append((f"Theme: {name}", _theme_setter(app, name), note))
        for row in self._sessions[:50]:
            out.append(
                (
                    f"Session: {row.id} · {row.project} · {row.status}",
                    _runner(app, f"sessions({row.id!r})"),
                    "open it in the sessions list (replay, resume, fork, export)",
                )
            )
        return out

    async def discover(self) -> Hits:
        for text, run, help_text in self._entries():
            yield DiscoveryHit(text, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, run, help_text in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), run, help=help_text)


def _theme_setter(app: App[Any], name: str) -> Callable[[], Any]:
    def run() -> None:
        app.theme = name

    return run


def _runner(app: App[Any], action: str) -> Callable[[], Any]:
    async def run() -> None:
        await app.run_action(action)

    return run


async def settled(result: Any) -> Any:
    """A command's result: a remote fleet's commands are coroutines (awaited here, on the
    core's loop), an in-process supervisor's are plain values."""
    if inspect.isawaitable(result):
        return await result
    return result


def _verb_bindings(keymap: dict[str, str]) -> list[BindingType]:
    """The app's bindings in VERBS order, with the user's keys where keys.toml remaps them.

    Built here rather than with `App.set_keymap`, which re-adds remapped bindings at the end
    of the map: on a narrow footer the remapped verbs were the ones cut off.
    """
    bindings: list[BindingType] = [
        Binding(keymap.get(bid, keys), action, label, id=bid, show=bid not in FOOTER_HIDDEN)
        for bid, keys, action, label, _ in VERBS
    ]
    bindings.append(Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit_ctrl_c"))
    return bindings


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
    InboxList { height: auto; min-height: 5; max-height: 50%; border: round $panel-lighten-2; }
    PanelGrid { height: 2fr; }
    /* Toasts sit bottom-left, over the live panels: never over the inbox detail (right)
       or the keys; compact; and not over help or other full views. */
    ToastRack { align: left bottom; margin-bottom: 2; }
    ToastHolder { align-horizontal: left; }
    Toast { width: 56; max-width: 45%; padding: 0 1; margin-top: 0; }
    HelpScreen Toast, PolicyScreen Toast { display: none; }
    """
    COMMANDS: ClassVar = {TowerCommands}
    BINDINGS: ClassVar[list[BindingType]] = _verb_bindings({})

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
        notify: NotifyConfig | None = None,
        watch: bool = True,
        resume: str | None = None,
        offer_resume: bool = True,
        config_file: Path | None = None,
        attach: Path | None = None,
        up: bool = False,
    ) -> None:
        """`config_file`: the keys.toml these keys, bell, theme and notifications came from;
        watched (with `watch`), so an edit applies while tower runs. `attach`: the socket of
        a running fleet (`tower attach`): this screen is a view of it, not its home. `up`:
        the session runs as a fleet (`tower up`, started from here after the first frame,
        or the project's running one), and this screen attaches to it (`tower run`)."""
        super().__init__()
        self.project = project
        self.db = db
        self.attach = attach
        self.up = up
        self.resume_id = resume  # continue this recorded session instead of starting one
        self.offer_resume = offer_resume and resume is None
        self.now = clock
        self.session_id = session_id
        self.bell_on = bell
        self.notifications = Notifications(self, notify, title=f"tower · {project.name}")
        self.watching = watch  # the project file and themes (Textual's App.watch is a method)
        self.theme_name = theme
        self.config_file = config_file
        self._user_keymap = keymap or {}
        if self._user_keymap:
            self._bindings = BindingsMap(_verb_bindings(self._user_keymap))
        # The session (store, bus, supervisor), opened by the composition root on the core's
        # thread; the app's own code steers it only through `control`.
        self.session: SessionRuntime | None = None
        self.control: Control | RemoteControl | None = None
        # Events the bus handed over on the core's thread, read by the UI's tick.
        self._inbound: deque[Event] = deque()
        self._notices: deque[dict[str, Any]] = deque()  # a fleet's, for a view of it
        self._gone = False  # the fleet this screen views has stopped (said once)
        self.note = "starting…"
        self.burn = BurnMeter()
        self.pace = RateMeter()  # threads ended per second: the run's throughput
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
        self.attention = AttentionClock()
        self.shown: Target | None = None  # what the detail pane shows: what verbs act on
        self._select_next: str | None = None  # a thread just spawned, to select when listed

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield BudgetBar(id="budget")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(
                    placeholder="filter threads (id, agent, task, state, model)…", id="filter"
                )
                yield ThreadList(self.state, self.now, id="threads", lock=self.state_lock)
            with Vertical(id="right"):
                yield InboxList(self.state, self.now, id="inbox", lock=self.state_lock)
                yield InboxDetail(id="detail")
        yield PanelGrid(id="panels")
        yield SelectionBar(id="selection")
        yield Footer()

    def state(self) -> TowerState:
        return self.control.state if self.control is not None else _EMPTY

    # The session's parts, for tests and benchmarks that look inside; the app's own code
    # reads the state and steers through `control`.
    @property
    def store(self) -> Store | None:
        return self.session.store if self.session is not None else None

    @property
    def sup(self) -> Supervisor | None:
        return self.session.sup if self.session is not None else None

    def _gate(self) -> CallFigures | None:
        """The call gate's counters (plain numbers the core thread updates; a frame may see
        them one call apart, which a once-a-second figure can bear)."""
        return self.control.calls() if self.control is not None else None

    def on_mount(self) -> None:
        # The main screen's widgets, kept: other screens (detail, dialogs) come on top of it.
        self.threads_list = self.query_one(ThreadList)
        self.inbox_list = self.query_one(InboxList)
        self.panel_grid = self.query_one(PanelGrid)
        self.budget_bar = self.query_one(BudgetBar)
        self.inbox_detail = self.query_one(InboxDetail)
        self.selection_bar = self.query_one(SelectionBar)
        self.threads_list.on_highlight = self._highlighted
        self.inbox_list.on_highlight = self._highlighted
        budget = self.project.budget
        self.inbox_list.human_minutes_cap = budget.human_minutes
        self.inbox_list.routine_usd = budget.routine_usd
        self.threads_list.border_title = "Threads"
        self.inbox_list.border_title = counts_title(_EMPTY)
        self._apply_themes(*load_themes(), first=True)
        self.threads_list.focus()
        self._timer = self.set_interval(TICK_S, self._tick)
        self._tick()
        self._boot()
        if self.watching:
            self._watch_themes()
            if self.attach is None and not self.up:  # a fleet follows its own tower.toml
                self._watch_project()
            if self.config_file is not None and self.config_file.parent.is_dir():
                self._watch_keys()

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

    @work(group="watch-keys")
    async def _watch_keys(self) -> None:
        assert self.config_file is not None
        await watch_file(self.config_file, self._reload_keys, self._stop_watchers)

    async def _reload_keys(self, path: Path) -> None:
        """An edited keys.toml: its keys, bell, theme and notifications apply at once (the
        footer and `?` show the new keys); a bad edit is reported and changes nothing."""
        try:
            config = await asyncio.to_thread(load_config, path)
            problems = validate_keys(
                config, {bid for bid, *_ in VERBS}, {b: k for b, k, *_ in VERBS}
            )
        except ConfigError as exc:
            problems = [str(exc)]
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            self.notify(
                f"{problems[0]}{more} — kept the previous version",
                title="keys.toml not reloaded",
                severity="error",
                timeout=10,
            )
            return
        self._user_keymap = config.keymap()
        self._bindings = BindingsMap(_verb_bindings(self._user_keymap))
        self.refresh_bindings()
        self.bell_on = config.bell
        if config.notify != self.notifications.config:
            self.notifications = Notifications(
                self, config.notify, title=f"tower · {self.project.name}"
            )
        if config.theme is not None and config.theme != self.theme:
            if config.theme in self.available_themes:
                self.theme = config.theme
            else:
                self.notify(f"no theme named {config.theme!r}", severity="warning")
        self.theme_name = config.theme
        self.notify("keys, bell, theme and notifications apply now", title="keys.toml reloaded")

    async def _reload_project(self, path: Path) -> None:
        """An edited tower.toml: new agents and tasks can be spawned; a bad edit changes nothing."""
        try:
            project = await asyncio.to_thread(load_project, path.parent)
        except ProjectError as exc:
            title, message = reload_words(exc)
            self.notify(message, title=title, severity="error", timeout=10)
            return
        self.project = project
        control = self.control
        if isinstance(control, Control) and self.core is not None:
            await self._command(lambda: control.reload(project))
        title, message = reload_words(project)
        self.notify(message, title=title)

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
        if self.attach is not None:
            await self._attach_fleet(self.attach)
            return
        if self.up:
            await self._up_fleet()
            return
        await self._offer_resume()
        self.note = "loading models…"
        try:
            problems = await self.core.run(self._core_boot())
        except SESSION_ERRORS as exc:
            self.exit(return_code=2, message=Text(f"tower: {exc}"))
            return
        if problems:
            self.exit(return_code=2, message=Text("\n".join(problems)))
            return
        self._rows_dirty = self._inbox_dirty = True  # a resumed session: draw what it holds
        # litellm, pydantic and the threads' settings are alive for good: a full collection
        # walking them stalls the screen for ~150 ms, so move them out of the collector's way.
        gc.freeze()
        self.note = ""
        self.booted.set()

    async def _offer_resume(self) -> None:
        """A crashed session of this project with unfinished threads: resume it instead of
        starting anew? (one key)"""
        if not self.offer_resume:
            return
        assert self.core is not None
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

    async def _up_fleet(self) -> None:
        """`tower run`: the project's fleet, brought up (core/fleet.py: the running one
        reused, one whose service died resumed, else a new one started, in its own process),
        then this screen attaches to it. The process start runs in a thread: the first frame
        is already on screen, saying what is happening."""
        from tower.core import fleet

        root = self.project.root
        if self.resume_id is None:
            live, crashed = await asyncio.to_thread(fleet.of_project, root)
            if live is None and crashed is None:
                await self._offer_resume()
        self.note = "starting the fleet…"
        try:
            up = await asyncio.to_thread(fleet.up, root, self.project.name, self.db, self.resume_id)
        except fleet.StartError as exc:
            self.exit(return_code=2, message=Text("\n".join(exc.problems)))
            return
        except ServiceError as exc:
            self.exit(return_code=2, message=Text(f"tower: {exc}"))
            return
        await self._attach_fleet(up.socket)
        if self.control is None:
            return
        if up.how == "reused":
            self.notify(
                f"{self.project.name} was already running: this is a view of it (q: detach "
                "or stop it)",
                title=f"attached to {up.session}",
            )
        elif up.how == "resumed":
            self.notify(
                "its unfinished threads go on from their recorded calls",
                title=f"resumed {up.session}",
            )

    async def _attach_fleet(self, path: Path) -> None:
        """A view of a running fleet: its state and events come over its socket, and so do
        the commands; quitting asks whether the fleet stops too."""
        assert self.core is not None
        self.note = "attaching…"
        try:
            remote = await self.core.run(
                RemoteControl.connect(
                    path,
                    on_event=self._on_event,
                    on_resync=self._resynced,
                    on_notice=self._notices.append,
                )
            )
        except ServiceError as exc:
            self.exit(return_code=2, message=Text(f"tower: {exc}"))
            return
        self.control = remote
        self.project = remote.project
        self._rows_dirty = self._inbox_dirty = True
        self.note = ""
        self.booted.set()
        self.sub_title = f"attached to {remote.session_id}"

    def _resynced(self) -> None:
        """On the core's thread: a view that fell behind got a fresh snapshot; the next
        tick redraws every row and the inbox (plain flags: no UI work here)."""
        self._rows_dirty = self._inbox_dirty = True

    async def _core_boot(self) -> list[str]:
        """On the core's loop: the composition root opens the log, checks the models and MCP
        commands (one line per problem), wires the session and starts (or resumes) it."""
        try:
            session = await SessionRuntime.open(
                self.db,
                self.project,
                resume=self.resume_id,
                session_id=self.session_id,
                clock=self.now,
                on_event=self._on_event,
                check=True,
            )
        except PreflightError as exc:
            return exc.problems
        self.session, self.control = session, Control(session.sup)
        try:
            await session.start()
        except SESSION_ERRORS as exc:  # an MCP server that does not start, among others
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

    def _fleet_gone(self, remote: RemoteControl) -> None:
        """The fleet this screen views has stopped (tower down elsewhere, or its process
        died): say so for good, keep the last state on screen, and let q simply leave."""
        self._gone = True
        why = remote.lost or "the connection ended"
        self.note = f"fleet {remote.session_id} has stopped · q leaves"
        self.sub_title = f"was attached to {remote.session_id}"
        self.notify(
            f"{why}. The screen keeps its last state; `tower up {self.project.root}` resumes "
            "the fleet if threads were left unfinished.",
            title=f"fleet {remote.session_id} has stopped",
            severity="error",
            timeout=30,
        )

    def _show_notice(self, msg: dict[str, Any]) -> None:
        """A fleet's notice on this view: its edited tower.toml reloaded (the agents and
        tasks it offers are the new ones), or a bad edit of it refused."""
        control = self.control
        if msg.get("reloaded") and isinstance(control, RemoteControl):
            self.project = control.project
        error = msg.get("severity") == "error"
        self.notify(
            str(msg.get("message", "")),
            title=str(msg.get("title", "")),
            severity="error" if error else "information",
            timeout=10 if error else 5,
        )

    def _on_event(self, ev: Event) -> None:
        """The bus's subscriber: runs on the core's thread, inside bus.emit, so it does no UI
        work at all. It only queues the event (deque.append is atomic); the UI thread reads
        the queue on its next tick (`_drain_events`) and marks what changed there."""
        self._inbound.append(ev)

    def _drain_events(self) -> None:
        """On the UI thread: what the queued events changed (rows, inbox, panels, toasts,
        the open thread's screen); drawing waits for the tick that called this."""
        inbound = self._inbound
        while inbound:
            ev = inbound.popleft()
            if ev.thread is not None:
                self._dirty.add(ev.thread)
            kind = ev.kind
            if kind is EventKind.THREAD_STATE or kind is EventKind.THREAD_SPAWNED:
                self._rows_dirty = True
                p = payload_of(ev)
                if isinstance(p, pl.ThreadStateChanged) and p.state == ThreadState.FAILED:
                    self._failures.append(ev)
            elif kind is EventKind.INBOX_OPENED:
                self._inbox_dirty = True
                self._new_items.append(ev)
            elif kind is EventKind.INBOX_CLOSED:
                self._inbox_dirty = True
                self.notifications.saw_closed(ev)
            elif kind is EventKind.MCP_SERVER:
                p = payload_of(ev)
                if isinstance(p, pl.McpServer) and p.status in ("crashed", "failed"):
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
        self._drain_events()
        while self._notices:  # what the fleet told its views (a view's only, see _attach_fleet)
            self._show_notice(self._notices.popleft())
        control = self.control
        if isinstance(control, RemoteControl) and control.gone.is_set() and not self._gone:
            self._fleet_gone(control)
        now = self.now()
        state = self.state()
        self.burn.add(now, state.budget.spent_usd)
        self.pace.add(now, ended_count(state))
        second = int(now)
        threads = self.threads_list
        inbox = self.inbox_list
        with self.state_lock(), self.batch_update():
            self.budget_bar.show(
                state,
                self.burn.per_minute(),
                self.note,
                self.inbox_list.human_minutes_cap,
                now,
                self._gate(),
                self.selected_thread(),
                self.pace.per_second(),
            )
            if self._rows_dirty or (self._dirty and threads.sort_key in ("cost", "tokens")):
                threads.rebuild()
                if self._select_next is not None and threads.select_key(self._select_next):
                    self._select_next = None
            elif self._dirty or second != self._last_second:
                threads.refresh()
            # Rows also change by a key on the list itself (collapsing a tree).
            title = (
                f"Threads {len(threads.rows)}/{len(state.threads)}"
                + (f" · filter “{threads.filter_text}”" if threads.filter_text else "")
                + f" · sort {threads.sort_key}"
            )
            if threads.border_title != title:
                threads.border_title = title
            if self._inbox_dirty:
                inbox.rebuild()
                inbox.border_title = counts_title(state)
                if not inbox.has_focus:
                    self._follow_threads()  # the target stays the selected thread's item
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
        self._notify_pending(state)  # its reads are single lookups and list() copies

    def state_lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held while the UI walks the state, so the core never changes it mid-walk."""
        return self.control.lock if self.control is not None else contextlib.nullcontext()

    def _feed_detail(self) -> None:
        detail = self._detail
        if detail is None or not detail.loaded or not self._detail_events:
            return  # live events wait until the log's history is on the screen
        events, self._detail_events = self._detail_events, []
        if detail.is_attached:
            detail.add_events(events)
            self._show_head(detail)
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

    def on_app_blur(self) -> None:
        self.notifications.focus(False)  # items from now on may notify ([notify] in keys.toml)
        self.attention.hidden(self.now())  # the person is elsewhere: not deciding

    def on_app_focus(self) -> None:
        self.notifications.focus(True)
        if self.shown is not None:
            self.attention.showing(self.now())

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_key = time.monotonic()
            self.attention.activity(self.now())
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
            if tid in self._dirty or panel.thread != tid or panel.marks != marks:
                panel.show(view, *marks)
                panel.marks = marks

    def _show_item(self) -> None:
        """Draws the target in the detail pane and the selection bar, and keeps it: verbs act
        on exactly what was drawn last (`self.shown`), never on a target recomputed later."""
        with self.state_lock():
            target = self._compute_target()
            self.shown = target
            state = self.state()
            now = self.now()
            detail = self.inbox_detail
            first = state.inbox.get(target.items[0]) if target is not None else None
            amount = budget_amount(target, first) if target is not None else 0.0
            tid = self.selected_thread()
            view = state.threads.get(tid) if tid else None
            hints = hints_for(
                target,
                self.key_of,
                amount,
                view is not None and view.state.ended,
                tree=view is not None and bool(view.children),
            )
            if target is None:
                if view is None:
                    detail.show_text(Text("Nothing selected.", style="dim"))
                else:
                    detail.show_text(
                        Text(
                            f"{view.id} has nothing waiting for you ({view.state}"
                            f"{' · ' + view.reason if view.reason else ''}).\n\n"
                            f"{self.key_of('next_item')} goes to the next item that needs you"
                            f" ({len(state.inbox)} in the inbox).",
                            style="dim",
                        )
                    )
            elif (target.situation is not None and target.situation.is_group) or target.marked:
                sit = target.situation or Situation(
                    "g:marked",
                    target.kind or InboxKind.APPROVAL,
                    f"{len(target.items)} marked item(s)",
                    target.items,
                    tuple(dict.fromkeys(state.inbox[i].thread for i in target.items)),
                    min(state.inbox[i].created for i in target.items),
                )
                detail.show_situation(sit, state, now, hints)
            else:
                agent = (
                    state.threads[first.thread].agent
                    if first and first.thread in state.threads
                    else ""
                )
                detail.show(first, now, agent, hint=hints)
            self.selection_bar.show(target, self.selected_thread(), hints)
            if isinstance(self.screen, ThreadScreen):
                self.screen.show_target(target, hints)
        if target is None:
            self.attention.hidden(now)
        elif self.app_focus:
            self.attention.showing(now)

    def _compute_target(self) -> Target | None:
        """What a verb would act on now: the marked set, else the inbox row under the cursor,
        else nothing (the selected thread has nothing waiting). On a thread's own screen:
        that thread's oldest item."""
        state = self.state()
        inbox = self.inbox_list
        if isinstance(self.screen, ThreadScreen):
            tid = self.screen.thread
            mine = sorted(
                (i for i in list(state.inbox.values()) if i.thread == tid),
                key=lambda i: (i.created, i.id),
            )
            if not mine:
                return None
            sit = inbox.member_of.get(mine[0].id)
            return Target(
                (mine[0].id,),
                mine[0].kind,
                target_label(mine[0], summary_of(mine[0])),
                sit if sit is not None and sit.key == mine[0].id and sit.resolve else None,
                thread=tid,
            )
        marked = sorted(
            (state.inbox[i] for i in inbox.marked if i in state.inbox),
            key=lambda i: (i.created, i.id),
        )
        if marked:
            kinds = {i.kind for i in marked}
            return Target(
                tuple(i.id for i in marked),
                kinds.pop() if len(kinds) == 1 else None,
                f"{len(marked)} marked: "
                + " ".join(i.id for i in marked[:8])
                + (" …" if len(marked) > 8 else ""),
                marked=True,
            )
        if inbox.detached:
            return None
        sit = inbox.situation_of(inbox.current)
        if sit is None:
            return None
        if sit.is_group:
            return Target(sit.items, sit.kind, f"{sit.cause} ({len(sit.items)} items)", sit)
        item = state.inbox.get(sit.items[0])
        if item is None:
            return None
        return Target(
            (item.id,),
            item.kind,
            target_label(item, summary_of(item)),
            sit if sit.resolve else None,
            thread=item.thread,
        )

    def _notify_pending(self, state: TowerState) -> None:
        """Toasts only for what needs the human: new inbox items, budget stops, failures."""
        items, failures = self._new_items, self._failures
        self._new_items, self._failures = [], []
        cap = self.inbox_list.human_minutes_cap
        if cap is not None and state.human_seconds / 60 >= cap:
            # The attention budget is spent: routine items wait in the digest, silently.
            routine = self.inbox_list.routine_usd
            items = [
                e
                for e in items
                if not (
                    (found := state.inbox.get(payload_as(e, InboxOpened).item)) is not None
                    and is_routine(found, routine)
                )
            ]
        self.notifications.tick(state, items, self.now(), self.app_focus)
        if not items and not failures:
            return
        opened = [(e, payload_as(e, InboxOpened)) for e in items]
        budget = [(e, p) for e, p in opened if p.kind == InboxKind.BUDGET]
        others = [(e, p) for e, p in opened if p.kind != InboxKind.BUDGET]
        if len(others) <= 3:
            for ev, p in others:
                item = state.inbox.get(p.item)
                what = summary_of(item) if item else p.kind
                what = what if len(what) <= 70 else what[:69] + "…"
                self.notify(
                    f"{ev.thread}: {what}",
                    title=f"needs you · {p.kind}",
                    severity="warning",
                    timeout=4,
                )
        else:
            self.notify(
                f"{len(others)} new items need you (] to go through them)",
                title="inbox",
                severity="warning",
            )
        # A budget item's scope is its kind's own field (in the payload's extra).
        session = [p for _, p in budget if p.extra.get("scope") == "session"]
        own = [e for e, p in budget if p.extra.get("scope") != "session"]
        new_ids = {p.item for p in session}
        stop_began = session and not any(
            i.kind is InboxKind.BUDGET and i.data.get("scope") == "session" and i.id not in new_ids
            for i in list(state.inbox.values())
        )
        if stop_began:
            # One toast when the session budget stops the fleet; the threads it stops after
            # that join the inbox's one situation row instead of a toast each.
            self.notify(
                "the session budget is spent: threads stop as they reach their next call; "
                f"{self.key_of('next_item')} shows what letting them finish costs",
                title="budget stop",
                severity="error",
            )
        if own:
            names = ", ".join(e.thread or "" for e in own[:3])
            more = f" and {len(own) - 3} more" if len(own) > 3 else ""
            self.notify(
                f"{names}{more} reached their own budget",
                title="budget stop",
                severity="error",
            )
        for ev in [e for e in failures if e.kind is EventKind.MCP_SERVER]:
            mcp = payload_as(ev, McpServer)
            again = "restarting" if mcp.status == "crashed" else "stopped; o shows servers"
            self.notify(
                f"{mcp.server}: {mcp.detail[:100]} ({again})",
                title=f"MCP server {mcp.status}",
                severity="error",
            )
        failures = [e for e in failures if e.kind is not EventKind.MCP_SERVER]
        if failures:
            for ev in failures[:3]:
                reason = payload_as(ev, ThreadStateChanged).reason[:100]
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

    def _verbs_here(self) -> bool:
        """Verbs act only where their target is drawn: the main screen and a thread's screen.
        Elsewhere (the files view, replay) a key must not reach an item the person can't see."""
        if self.screen is self.screen_stack[0] or isinstance(self.screen, ThreadScreen):
            return True
        self.notify("escape first: this view does not show what that key would act on")
        return False

    def current_item(self) -> str | None:
        """The one item the screen shows as the target (None for none, a group or a set)."""
        target = self.shown
        return target.single if target is not None else None

    def _open_items(self, target: Target) -> list[str]:
        """The target's items still open; the rest were decided since they were drawn."""
        inbox = self.state().inbox
        return [i for i in target.items if i in inbox]

    async def _command(self, fn: Callable[[], Any], done: str | None = None) -> Any:
        """Runs a supervisor command on the core's loop; a refusal is a toast, never a crash."""
        if self.closed:
            return None  # keys typed while quitting: the core has stopped
        if self.control is None or self.core is None:
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
        if not self._verbs_here():
            return None
        tid = self.selected_thread()
        if tid is None:
            self.notify("no thread selected", severity="warning")
        return tid

    def _need_item(self) -> str | None:
        """The single item shown as the target, for verbs that act on one item."""
        found = self._need_target()
        if found is None:
            return None
        target, items = found
        if target.single is None or len(items) != 1:
            self.notify(
                f"this works on one item; the target is {len(target.items)} items"
                " (→ opens a group)",
                severity="warning",
            )
            return None
        return items[0]

    def _need_target(self) -> tuple[Target, list[str]] | None:
        """What the screen shows as the target, and which of its items are still open."""
        if not self._verbs_here():
            return None
        target = self.shown
        if target is None:
            tid = self.selected_thread()
            self.notify(
                f"{tid} has nothing waiting for you" if tid else "nothing selected",
                severity="warning",
            )
            return None
        items = self._open_items(target)
        if not items:
            self.notify(f"{' '.join(target.items)} already decided", severity="warning")
            return None
        return target, items

    def _spend_attention(self, n: int) -> float:
        """The person's seconds on this decision, shared by the n items it settles."""
        return self.attention.take(self.now()) / max(n, 1)

    def _after_decision(self) -> None:
        self.inbox_list.marked.clear()
        self._inbox_dirty = True

    # --- verbs --------------------------------------------------------------------------

    async def action_spawn(self) -> None:
        control = self.control
        if control is None:
            self.notify("still starting…", severity="warning")
            return
        project = control.project
        models = project.all_models()
        # What spawning each task would start now (its next id, {n} filled), from the core.
        tasks = await self._command(control.task_copies)
        if tasks is None or isinstance(self.screen, SpawnDialog):  # n pressed twice
            return

        async def spawn(req: SpawnRequest | None) -> None:
            if req is None:
                return
            task = req.task
            if task is not None:
                tid = await self._command(
                    lambda: control.spawn_task(
                        task, model=req.model, budget_usd=req.budget_usd, prompt=req.prompt
                    )
                )
            else:
                tid = await self._command(
                    lambda: control.spawn(
                        req.agent,
                        req.prompt or "",
                        model=req.model,
                        budget_usd=req.budget_usd,
                        workspace=req.workspace,
                    )
                )
            if tid:
                self.notify(f"spawned {tid}", timeout=2)
                self._rows_dirty = True
                self._select_next = tid  # selected once the list has its row

        self.push_screen(SpawnDialog([a.name for a in project.agents], models, tasks), spawn)

    async def action_pause(self) -> None:
        tid = self._need_thread()
        control = self.control
        if tid is None or control is None:
            return
        view = self.state().threads.get(tid)
        if view is not None and view.pause_requested:
            await self._command(lambda: control.resume(tid), f"resumed {tid}")
        else:
            await self._command(lambda: control.pause(tid), f"pausing {tid}")

    async def action_pause_all(self) -> None:
        control = self.control
        if control is None:
            return
        with self.state_lock():
            live = [v for v in self.state().threads.values() if v.state not in ENDED_STATES]
            asked = live and all(v.pause_requested for v in live)
        if asked:
            await self._command(control.resume_all, f"resumed {len(live)} thread(s)")
        else:
            await self._command(control.pause_all, f"pausing {len(live)} thread(s)")

    def action_kill(self) -> None:
        tid = self._need_thread()
        if tid is None:
            return
        view = self.state().threads.get(tid)
        if view is not None and view.state.ended:
            self.notify(f"{tid} has already ended ({view.state})", severity="warning")
            return

        async def confirmed(yes: bool | None) -> None:
            control = self.control
            if yes and control is not None:
                await self._command(lambda: control.kill(tid), f"killed {tid}")

        self.push_screen(ConfirmDialog(f"Kill thread {tid}?", yes="Kill"), confirmed)

    async def action_escalate(self) -> None:
        tid = self._need_thread()
        control = self.control
        if tid is None or control is None:
            return
        result = await self._command(lambda: control.escalate(tid, "model"))
        if result and str(result).startswith("i"):
            self.notify(f"{tid}: no stronger model left — handed to you ({result})")
        elif result:
            self.notify(f"{tid} escalated to {result}", timeout=2)

    def _live_tree(self) -> tuple[str, list[str]] | None:
        """The selected thread and the live threads of its subtree (itself included)."""
        tid = self._need_thread()
        if tid is None:
            return None
        with self.state_lock():
            threads = self.state().threads
            live = [t for t in subtree(self.state(), tid) if not threads[t].state.ended]
        if not live:
            self.notify(f"{tid}'s tree has no thread still running", severity="warning")
            return None
        return tid, live

    async def action_pause_tree(self) -> None:
        """Z: pause every live thread of the selected subtree; when each already has a pause
        requested, resume them all."""
        found = self._live_tree()
        control = self.control
        if found is None or control is None:
            return
        tid, live = found
        with self.state_lock():
            threads = self.state().threads
            asked = all(threads[t].pause_requested for t in live)
        if asked:
            n = await self._command(lambda: control.resume_tree(tid))
            what = "resumed"
        else:
            n = await self._command(lambda: control.pause_tree(tid))
            what = "pausing"
        if n is not None:
            self.notify(f"{what} {n} thread(s) of {tid}'s tree", timeout=2)

    def action_kill_tree(self) -> None:
        """X: kill the selected thread and its sub-agents, after asking (naming how many)."""
        found = self._live_tree()
        if found is None:
            return
        tid, live = found
        below = len([t for t in live if t != tid])
        agents = f"{below} sub-agent{'s' if below != 1 else ''}"
        if tid not in live:
            question = f"Kill the {agents} of {tid} still running?"
        elif below:
            question = f"Kill {tid} and its {agents}?"
        else:
            question = f"Kill thread {tid}? (no sub-agent still running)"

        async def confirmed(yes: bool | None) -> None:
            control = self.control
            if yes and control is not None:
                n = await self._command(lambda: control.kill_tree(tid))
                if n is not None:
                    self.notify(f"killed {n} thread(s) of {tid}'s tree", timeout=2)

        self.push_screen(ConfirmDialog(question, yes="Kill"), confirmed)

    async def action_escalate_tree(self) -> None:
        """U: each live thread of the selected subtree that has a stronger model moves up."""
        found = self._live_tree()
        control = self.control
        if found is None or control is None:
            return
        tid, _live = found
        n = await self._command(lambda: control.escalate_tree(tid))
        if n is not None:
            self.notify(f"escalated {n} thread(s) of {tid}'s tree", timeout=2)

    async def action_hand(self) -> None:
        tid = self._need_thread()
        control = self.control
        if tid is not None and control is not None:
            await self._command(
                lambda: control.escalate(tid, "human"),
                f"{tid} handed to you: it stops at its next checkpoint",
            )

    async def _decide_each(
        self, items: list[str], fn: Callable[[str, float, str | None], Any], what: str
    ) -> int:
        """Applies one decision to each item on the core's loop; returns how many applied.
        The person's time is shared among the items, and the log records them as one batch
        (one decision), however many items one key settled."""
        share = self._spend_attention(len(items))
        batch = items[0] if len(items) > 1 else None

        async def run() -> int:
            done = 0
            for item in items:
                try:
                    await settled(fn(item, share, batch))
                    done += 1
                except CommandError:
                    pass  # decided meanwhile (a rule, its thread ended): nothing to do
            return done

        done = await self._command(run)
        self._after_decision()
        if done:
            self.notify(f"{what} {done if len(items) > 1 else items[0]}", timeout=2)
        return done or 0

    async def action_approve(self) -> None:
        """a: approve the target; on a budget target raise it by the shown amount; on a
        handoff let the thread continue; on a question, answer it."""
        found = self._need_target()
        control = self.control
        if found is None or control is None:
            return
        target, items = found
        with self.state_lock():
            inbox = self.state().inbox
            items = [i for i in items if i in inbox]  # decided since they were drawn: skip
            kinds = {inbox[i].kind for i in items}
            budget = [i for i in items if inbox[i].kind is InboxKind.BUDGET]
            rest = [i for i in items if inbox[i].kind in (InboxKind.APPROVAL, InboxKind.ESCALATION)]
        if kinds == {InboxKind.QUESTION}:
            self.action_reply()
            return
        skipped = len(items) - len(budget) - len(rest)
        if budget:
            await self._raise_for(target, budget)
        if rest:
            await self._decide_each(
                rest,
                lambda i, a, b: control.approve(i, attention_s=a, batch=b),
                "approved",
            )
        if skipped:
            self.notify(f"{skipped} question(s) skipped: {self.key_of('reply')} answers one")

    async def _raise_for(self, target: Target, items: list[str]) -> None:
        """Raises what stopped these budget items, by the amount the screen showed."""
        control = self.control
        assert control is not None
        with self.state_lock():
            inbox = self.state().inbox
            items = [i for i in items if i in inbox]  # a rule may have decided one since
            if not items:
                return
            session = [i for i in items if inbox[i].data.get("scope") == "session"]
            # An ancestor's cap (sub-agents): one raise per ancestor wakes its stopped threads.
            trees: dict[str, list[str]] = {}
            for i in items:
                if inbox[i].data.get("scope") == "subtree":
                    trees.setdefault(str(inbox[i].data.get("account")), []).append(i)
            own = [i for i in items if i not in session and inbox[i].data.get("scope") != "subtree"]
            amount = budget_amount(target, inbox[items[0]])
            woken_before = sum(1 for i in inbox.values() if i.kind is InboxKind.BUDGET)
        share = self._spend_attention(len(items))
        batch = items[0] if len(items) > 1 else None  # one key: one decision in the log

        async def run() -> None:
            if session:
                # One raise of the session cap wakes every thread it stopped.
                await settled(
                    control.raise_budget(
                        session[0],
                        usd=amount if amount > 0 else 0.0,
                        attention_s=share * len(session),
                        batch=batch,
                    )
                )
            for stopped in trees.values():
                # The amount shown is the group's when the target is that one tree's stop.
                by = amount if len(trees) == 1 and not session and not own else 0.0
                if control.is_open(stopped[0]):
                    await settled(
                        control.raise_budget(
                            stopped[0], usd=by, attention_s=share * len(stopped), batch=batch
                        )
                    )
            for i in own:
                if control.is_open(i):
                    await settled(control.raise_budget(i, attention_s=share, batch=batch))

        await self._command(run)
        self._after_decision()
        with self.state_lock():
            woken = woken_before - sum(
                1 for i in self.state().inbox.values() if i.kind is InboxKind.BUDGET
            )
        scope = "session budget" if session else "budget"
        self.notify(
            f"raised the {scope} by {usd(amount, 2)}; "
            f"{max(woken, len(own) + len(trees))} thread(s) woken",
            timeout=3,
        )

    async def action_deny(self) -> None:
        found = self._need_target()
        control = self.control
        if found is None or control is None:
            return
        _target, items = found
        await self._decide_each(
            items, lambda i, a, b: control.deny(i, attention_s=a, batch=b), "denied"
        )

    def action_deny_reason(self) -> None:
        """D: deny the target (an item, a group, the marked set) with a reason the agents read
        in the tool's result."""
        found = self._need_target()
        control = self.control
        if found is None or control is None:
            return
        target, items = found
        first = self.state().inbox.get(items[0])
        if len(items) == 1 and first is not None:
            what = f"{items[0]} ({first.data.get('tool') or first.kind} for {first.thread})"
        else:
            what = f"{len(items)} items ({target.label})"

        async def deny(reason: str | None) -> None:
            if reason is not None:
                await self._decide_each(
                    items,
                    lambda i, a, b: control.deny(i, comment=reason, attention_s=a, batch=b),
                    "denied",
                )

        self.push_screen(TextDialog(f"Deny {what} — the reason the agent reads"), deny)

    def action_edit(self) -> None:
        item = self._need_item()
        if item is None:
            return
        found = self.state().inbox[item]
        if found.kind is not InboxKind.APPROVAL:
            self.notify("only a tool call's arguments can be edited", severity="warning")
            return

        async def edited(args: dict[str, Any] | None) -> None:
            control = self.control
            if args is not None and control is not None:
                await self._command(
                    lambda: control.approve(item, args=args),
                    f"approved {item} with edited arguments",
                )

        self.push_screen(
            ArgsDialog(str(found.data.get("tool")), found.data.get("args", {})), edited
        )

    def action_reply(self) -> None:
        """r: answer the question, guide the handed-off threads, approve with a comment; with
        nothing waiting, a comment to the selected thread."""
        if not self._verbs_here():
            return
        target = self.shown
        tid = self.selected_thread()
        with self.state_lock():
            inbox = self.state().inbox
            items = self._open_items(target) if target is not None else []
            kinds = {inbox[i].kind for i in items}
            first = inbox[items[0]] if items else None
        if target is not None and not items:
            self.notify(f"{' '.join(target.items)} already decided", severity="warning")
            return
        if not items and tid is None:
            self.notify("no thread selected", severity="warning")
            return
        many = len(items) > 1
        if first is not None and kinds == {InboxKind.QUESTION} and not many:
            title = f"{first.thread} asks: {first.data.get('question', '')}"
        elif first is not None and kinds == {InboxKind.ESCALATION}:
            title = f"Guidance for {len(items)} threads" if many else f"Guidance for {first.thread}"
        elif first is not None and kinds == {InboxKind.APPROVAL}:
            title = (
                f"Approve {len(items)} calls with a comment"
                if many
                else f"Approve {first.data.get('tool')} for {first.thread} with a comment"
            )
        elif items:
            self.notify(
                "reply works on one question, or on approvals or handoffs of one kind",
                severity="warning",
            )
            return
        else:
            title = f"Comment to {tid} (read before its next model call)"
        control = self.control

        async def send(text: str | None) -> None:
            if not text or control is None:
                return
            if items:
                await self._decide_each(
                    items,
                    lambda i, a, b: control.reply(i, text, attention_s=a, batch=b),
                    "sent to",
                )
            elif tid is not None:
                await self._command(lambda: control.reply(tid, text), "sent")

        self.push_screen(TextDialog(title), send)

    def action_allow_like(self) -> None:
        target = self.shown
        if target is not None and target.situation is not None and target.situation.is_group:
            open_ = self._open_items(target)  # the same call: its first item speaks for all
            item = open_[0] if open_ else None
        else:
            item = self._need_item()
        if item is None or self.control is None:
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
            control = self.control
            if req is None or control is None:
                return
            self._spend_attention(1)  # the grant settles the covered items: no per-item time
            rid = await self._command(
                lambda: control.grant(
                    tool, req.args, agent=req.agent, minutes=req.minutes, item=item
                )
            )
            self._after_decision()
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
        """b: raise by an amount you type; on a budget target, the cap that stopped it."""
        control = self.control
        if control is None or not self._verbs_here():
            return
        target = self.shown
        state = self.state()
        with self.state_lock():
            items = self._open_items(target) if target is not None else []
            budget = [i for i in items if state.inbox[i].kind is InboxKind.BUDGET]
            first = state.inbox[budget[0]] if budget else None
        if target is not None and first is not None:
            session = first.data.get("scope") == "session"
            who = (
                f"{len(budget)} threads stopped by it"
                if session and len(budget) > 1
                else first.thread
            )
            if session:
                title = f"Raise the session budget ({who}) by (USD)"
            elif first.data.get("scope") == "subtree":
                title = f"Raise the budget of {first.data.get('account')}'s subtree by (USD)"
            else:
                title = f"Raise the thread budget of {first.thread} by (USD)"
            suggestion = budget_amount(target, first) or 0.01
        else:
            title = "Raise the session budget by (USD)"
            suggestion = max((state.budget.limit_usd or 0.0) * 0.25, 0.01)

        async def raised(amount: float | None) -> None:
            if not amount:
                return
            if first is not None and target is not None:
                share = self._spend_attention(len(budget))
                session = first.data.get("scope") == "session"
                lead = [budget[0]] if session else budget
                batch = budget[0] if len(budget) > 1 else None

                async def run() -> None:
                    for i in lead:
                        if control.is_open(i):
                            await settled(
                                control.raise_budget(i, usd=amount, attention_s=share, batch=batch)
                            )

                await self._command(run, f"budget raised by {usd(amount)}")
                self._after_decision()
            else:
                await self._command(
                    lambda: control.raise_budget(None, usd=amount),
                    f"budget raised by {usd(amount)}",
                )

        self.push_screen(AmountDialog(title, suggestion), raised)

    def _jump(self, step: int) -> None:
        """] / [: the next situation that needs you; the thread list follows."""
        inbox = self.inbox_list
        keys = inbox.rows
        if not keys:
            self.notify("nothing needs you", timeout=2)
            return
        current = inbox.current
        if inbox.detached or current not in keys or self.shown is None:
            # Nothing was shown: ] lands on the oldest situation, [ on the newest.
            index = 0 if step > 0 else len(keys) - 1
        else:
            # Something was shown (whichever list has focus): ] always moves on from it.
            index = (keys.index(current) + step) % len(keys)
        inbox.detached = False
        inbox.cursor = index
        inbox.focus()
        self._follow_inbox()
        self._show_item()

    def _follow_inbox(self) -> None:
        """The thread list's cursor goes to the thread of the inbox row under the cursor."""
        sit = self.inbox_list.situation_of(self.inbox_list.current)
        if sit is None:
            return
        item = self.state().inbox.get(sit.items[0])
        if item is None:
            return
        threads = self.threads_list
        if threads.select_key(item.thread):
            return
        with self.state_lock():
            # Filtered out, or under a collapsed parent: the list shows it again.
            changed = threads.reveal(item.thread) or bool(threads.filter_text)
            threads.filter_text = ""
            if changed:
                threads.rebuild()
        threads.select_key(item.thread)

    def _follow_threads(self) -> None:
        """The inbox cursor goes to the selected thread's oldest item, or shows none."""
        tid = self.threads_list.current
        inbox = self.inbox_list
        if inbox.marked:
            return  # a marked set is the target until it is decided or unmarked
        with self.state_lock():
            row = inbox.row_for_thread(tid) if tid is not None else None
        if row is None:
            inbox.detached = True
        else:
            inbox.detached = False
            inbox.select_key(row)

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

    async def action_sessions(self, select: str | None = None) -> None:
        """The sessions list: enter replays, r resumes, f forks, e exports (see its module)."""
        from tower.ui.screens.sessions import SessionsHost

        store, core = self.store, self.core
        if store is None or core is None or self.closed:
            self.notify("still starting…", severity="warning")
            return

        async def listed() -> list[Any]:
            await store.flush()  # this session's newest thread outcomes count too
            return await store.list_sessions()

        def live() -> int:
            return sum(1 for t in list(self.state().threads.values()) if not t.state.ended)

        host = SessionsHost(
            db=store.path,
            current=self.control.session_id if self.control is not None else None,
            run=lambda work: core.run(work(store)),
            live_threads=live,
            shutdown=self.shutdown,
        )
        self.push_screen(SessionsScreen(await core.run(listed()), host.current, host, select))

    def action_policy(self) -> None:
        control = self.control
        if control is None or self.core is None:
            self.notify("still starting…", severity="warning")
            return

        def read(fn: Callable[[TowerState], Any]) -> Any:
            with self.state_lock():
                return fn(self.state())

        async def revoke(rid: str) -> None:
            await self._command(lambda: control.revoke(rid), f"revoked {rid}")

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

    async def action_files(self) -> None:
        """w: the files the selected thread wrote, each with its diff against the original."""
        from tower.ui.screens.files import FilesScreen

        tid = self._need_thread()
        control, core = self.control, self.core
        if tid is None or control is None or core is None or isinstance(self.screen, FilesScreen):
            return
        # The supervisor's own records say where: read on the core's thread, not here.
        root, original = await core.call(control.workspace_folders, tid)
        events = await self.thread_events(tid)
        self.push_screen(FilesScreen(tid, root, original, events, self.pending_writes(tid)))

    def pending_writes(self, tid: str) -> list[tuple[str, str, str]]:
        """(item, path, diff) of the thread's write_file calls waiting for approval."""
        with self.state_lock():
            return [
                (i.id, str((i.data.get("args") or {}).get("path", "")), str(i.data.get("diff", "")))
                for i in list(self.state().inbox.values())
                if i.thread == tid and i.kind is InboxKind.APPROVAL and "diff" in i.data
            ]

    def action_focus_inbox(self) -> None:
        self.inbox_list.detached = False
        self.inbox_list.focus()
        self._follow_inbox()
        self._show_item()

    def action_focus_threads(self) -> None:
        self.threads_list.focus()
        self._follow_threads()
        self._show_item()

    def action_help(self) -> None:
        rows = [(self.key_of(bid), bid, desc) for bid, _k, _a, _l, desc in VERBS]
        rows += [
            ("enter", "-", "open the selected thread: transcript and cost per step"),
            ("←, -", "-", "collapse a thread's sub-agents (on a sub-agent: its parent's)"),
            ("→, +", "-", "expand a collapsed thread's sub-agents"),
            ("tab", "-", "cycle focus: threads, inbox"),
            ("escape", "-", "back / close"),
        ]
        self.push_screen(HelpScreen(rows))

    def _highlighted(self, rowlist: RowList, _key: str | None) -> None:
        """The row under a list's cursor changed (called at once, not via a message): the
        other list follows the focused one, and the target is drawn again."""
        if isinstance(rowlist, InboxList):
            if rowlist.has_focus:
                rowlist.detached = False
                self._follow_inbox()
        else:
            self._dirty.update(self._panel_targets())
            if rowlist.has_focus:
                self._follow_threads()
        self._show_item()

    @on(RowList.Selected)
    async def _open(self, event: RowList.Selected) -> None:
        key = event.key
        if isinstance(event.rowlist, InboxList):
            inbox = event.rowlist
            if key in inbox.by_key and inbox.by_key[key].is_group:
                inbox.action_expand(key not in inbox.expanded)
                return
            item = self.state().inbox.get(key or "")
            key = item.thread if item else None
        if key is not None:
            await self.open_thread(key)

    async def open_thread(self, tid: str) -> None:
        """The detail view: past events from the log, then live ones as they come. An
        attached view (`tower run`, `tower attach`) reads them from the fleet's log."""
        if self.control is None:
            return
        if self.store is None and not isinstance(self.control, RemoteControl):
            return
        screen = ThreadScreen(tid)
        await self.push_screen(screen)
        self._detail_events = []
        self._detail = screen  # live events from now on are queued for it
        events = await self.thread_events(tid)
        seen = events[-1].seq if events else 0
        screen.add_events(events)
        # Every event up to the log's read is queued by now (the bus queues an event before
        # the store can commit it): take them in, then keep only those the log did not have.
        self._drain_events()
        self._detail_events = [e for e in self._detail_events if e.seq > seen]
        screen.loaded = True
        self._show_head(screen)
        self._detail = screen
        self._show_item()  # on this screen, verbs act on the thread's oldest item: show it

    def _show_head(self, screen: ThreadScreen) -> None:
        """The thread's screen header, as the state has it now (redrawn as it changes)."""
        with self.state_lock():
            view = self.state().threads.get(screen.thread)
            if view is None:
                return
            status = str(view.state)
            if view.reason.startswith(status):
                status = view.reason  # "waiting for approval of …", not "waiting waiting …"
            elif view.reason:
                status += f": {view.reason}"
            tree = ""
            if view.parent is not None:
                tree += f" · sub-agent of {view.parent}"
            if view.children:  # its spending ceiling bounds its sub-agents' too
                n = len(subtree(self.state(), view.id))
                tree += f" · subtree {usd(view.subtree_usd)} ({n} threads)"
            saved = ""
            if view.saved_usd > 0:  # what the provider's prompt cache kept off its bill
                saved += f" · saved {usd(view.saved_usd)} by caching"
            if view.cache_hits:  # calls the response cache answered at $0
                saved += f" · {view.cache_hits} cached answer(s)"
            if view.compactions:
                saved += f" · folded {view.compactions}×"
            head = Text(
                f"{view.id} · {view.agent} · {status} · {view.model} · step {view.step}"
                f" · {usd(view.cost_usd)}{saved}{tree}\n{view.title}"
            )
        screen.show_head(head)

    async def thread_events(self, tid: str) -> list[Event]:
        """A thread's events as the log has them, read on the core's loop."""
        store, control, core = self.store, self.control, self.core
        if isinstance(control, RemoteControl) and core is not None and not self.closed:
            return await core.run(control.thread_events(tid))  # the fleet's log
        if store is None or control is None or core is None or self.closed:
            return []
        session = control.session_id

        async def read() -> list[Event]:
            await store.flush()
            return [ev async for ev in store.thread_events(session, tid)]

        return await core.run(read())

    def detail_closed(self, screen: ThreadScreen) -> None:
        if self._detail is screen:
            self._detail = None
        self.call_after_refresh(self._show_item)  # back on the main screen: its target again

    # --- leaving ------------------------------------------------------------------------

    async def action_quit(self) -> None:
        control = self.control
        if isinstance(control, RemoteControl):
            await self._quit_view(control)
            return
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

    async def _quit_view(self, remote: RemoteControl) -> None:
        """q on a view of a fleet: detach (the fleet keeps running), or stop the fleet."""
        if remote.gone.is_set():  # nothing left to detach from or to stop
            await self.shutdown()
            self.exit(0)
            return

        async def chosen(choice: str | None) -> None:
            if choice == "stop":
                await self._command(remote.down, f"stopping {remote.session_id}")
            if choice in ("detach", "stop"):
                await self.shutdown()
                self.exit(0)

        self.push_screen(
            ChoiceDialog(
                f"Leave fleet {remote.session_id}? Detached, it keeps running "
                f"(tower attach {remote.session_id[:15]} comes back to it).",
                [("detach", "d", "Detach"), ("stop", "s", "Stop the fleet")],
            ),
            chosen,
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
        session, control = self.session, self.control

        async def close() -> None:
            if session is not None:
                await session.close("quit")  # the supervisor, then the store
            if isinstance(control, RemoteControl):
                await control.close()  # a view leaves; the fleet goes on

        try:
            await core.run(close())
        finally:
            core.stop()

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            await self.shutdown()
