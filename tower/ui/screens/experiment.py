"""The palette's "Experiment": the project's variants (experiments/*.toml) run on the same
tasks, side by side — the table `tower experiment` prints, filled in as variants finish."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from tower.core.events import Event, EventKind, ThreadState
from tower.core.payloads import ThreadStateChanged, payload_as

if TYPE_CHECKING:
    from tower.core.experiment import VariantScore
    from tower.ui.core_thread import CoreThread


def variant_files(project_root: Path) -> list[Path]:
    return sorted((project_root / "experiments").glob("*.toml"))


class ExperimentScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "Close (stops it)")]
    DEFAULT_CSS = """
    ExperimentScreen { align: center middle; background: $background 60%; }
    ExperimentScreen > Vertical {
        width: 140; max-width: 95%; height: auto; max-height: 80%; border: thick $accent;
        background: $surface; padding: 1 2;
    }
    ExperimentScreen DataTable { height: auto; max-height: 20; }
    ExperimentScreen Label { width: 100%; }
    ExperimentScreen Label.title { text-style: bold; margin-bottom: 1; }
    ExperimentScreen Label.hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(self, project_root: Path, variants: list[Path], db: Any, core: CoreThread) -> None:
        super().__init__()
        self.project_root = project_root
        self.variants = variants
        self.db = db
        self.core = core
        self.scores: list[VariantScore] = []
        self.done = False
        self._stop: asyncio.Event | None = None
        self._ended: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        names = ", ".join(v.stem for v in self.variants)
        with Vertical():
            yield Label(f"Experiment · {names} · same tasks, --approve all", classes="title")
            yield Label("starting…", id="status")
            yield DataTable(id="scores", cursor_type="row", zebra_stripes=True)
            yield Label("", id="best")
            yield Label(
                "each variant is its own recorded session (tower replay SESSION) · "
                "escape closes (and stops a running experiment)",
                classes="hint",
            )

    def on_mount(self) -> None:
        from tower.core.experiment import table

        self.query_one("#scores", DataTable).add_columns(*table([])[0])
        self._ui_loop = asyncio.get_running_loop()
        self.run_worker(self._run(), exclusive=True)

    def _progress(self, name: str, ev: Event) -> None:
        """Runs on the core's thread, inside bus.emit: hands a thread's end over to the UI's
        loop without waiting for it (the core never blocks on the screen), nothing else."""
        if (
            ev.kind is EventKind.THREAD_STATE
            and ThreadState(payload_as(ev, ThreadStateChanged).state).ended
        ):
            self._ui_loop.call_soon_threadsafe(self._thread_ended, name)

    def _thread_ended(self, name: str) -> None:
        """On the UI's loop: one more thread of the variant ended."""
        self._ended[name] = self._ended.get(name, 0) + 1
        if not self.done and self.is_mounted:
            line = f"running {name}: {self._ended[name]} task(s) ended"
            self.query_one("#status", Label).update(line)

    async def _run(self) -> None:
        from tower.core.experiment import run_experiment, table, winner

        async def make_stop() -> asyncio.Event:
            return asyncio.Event()

        self._stop = await self.core.run(make_stop())  # before anything runs: escape can stop it

        # The experiment belongs to the core's loop, not to this screen: closing the screen
        # sets `stop` (the variant ends cleanly, its log closed) instead of cancelling it.
        task = self.core.run(
            run_experiment(
                self.project_root, self.variants, self.db, None, self._progress, self._stop
            )
        )
        try:
            self.scores = await asyncio.shield(task)
        except Exception as exc:  # a bad variant, a server that does not start, the log
            self.done = True
            if self.is_mounted:
                self.query_one("#status", Label).update(f"cannot run: {exc}")
            return
        self.done = True
        if not self.is_mounted:
            return
        grid = self.query_one("#scores", DataTable)
        for row in table(self.scores)[1:]:
            grid.add_row(*row, key=row[0])
        stopped = len(self.scores) < len(self.variants)
        self.query_one("#status", Label).update(
            "stopped" if stopped else f"{len(self.scores)} variant(s) done"
        )
        best = winner(self.scores)
        if best is not None and not stopped:
            self.query_one("#best", Label).update(
                f"best: {best} (lowest cost per success at the highest success rate)"
            )

    async def action_dismiss(self, result: None = None) -> None:
        stop = self._stop
        if stop is not None and not self.done:
            self.core.loop.call_soon_threadsafe(stop.set)
        self.dismiss(result)
