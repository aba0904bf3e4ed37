"""Modal dialogs: confirm, one-line text, JSON arguments, budget amount, grant, spawn.

Each returns its result through `dismiss`; escape cancels (returns None)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

if TYPE_CHECKING:
    from tower.core.supervisor import TaskCopy

DIALOG_CSS = """
_Dialog { align: center middle; background: $background 60%; }
_Dialog > Vertical {
    width: 80; max-width: 95%; height: auto; max-height: 95%; overflow-y: auto;
    border: thick $accent; background: $surface; padding: 1 2;
}
_Dialog Label { width: 100%; }
_Dialog Label.title { text-style: bold; margin-bottom: 1; }
/* Textual's own .error class paints a background: an empty message would be a red bar. */
_Dialog Label.error { color: $error; background: transparent; }
_Dialog Horizontal.buttons { height: auto; align-horizontal: right; margin-top: 1; }
_Dialog Button { margin-left: 1; }
_Dialog TextArea { height: 16; }
"""


class _Dialog(ModalScreen[Any]):
    DEFAULT_CSS = DIALOG_CSS
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(_Dialog):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "cancel", "No"),
        Binding("y,enter", "confirm", "Yes"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, classes="title")
            yield Label("y / enter to confirm · n / escape to cancel")
            with Horizontal(classes="buttons"):
                yield Button("No", id="no")
                yield Button(self.yes, id="yes", variant="error")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ChoiceDialog(_Dialog):
    """A question with a few answers, each with its key (and a button); escape cancels
    (dismissed with None)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]]) -> None:
        """`choices`: (what is returned, its key, its label)."""
        super().__init__()
        self.question = question
        self.choices = choices

    def compose(self) -> ComposeResult:
        keys = " · ".join(f"{key} {label.lower()}" for _, key, label in self.choices)
        with Vertical():
            yield Label(self.question, classes="title")
            yield Label(f"{keys} · escape to cancel")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                for value, _key, label in self.choices:
                    yield Button(label, id=f"choice-{value}")

    def on_key(self, event: events.Key) -> None:
        for value, key, _label in self.choices:
            if event.key == key:
                event.stop()
                self.dismiss(value)
                return

    def on_button_pressed(self, event: Button.Pressed) -> None:
        bid = event.button.id or ""
        self.dismiss(bid.removeprefix("choice-") if bid.startswith("choice-") else None)


class TextDialog(_Dialog):
    """One line of text: a reply, a comment, a filter."""

    def __init__(self, title: str, placeholder: str = "", value: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Input(value=self.value, placeholder=self.placeholder, id="text")
            yield Label("enter to send · escape to cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text or None)


class ArgsDialog(_Dialog):
    """Edit a tool call's arguments field by field, or in $EDITOR, before approving them.

    A string is edited as text: one line in an Input, several lines (or `content`) in a
    TextArea. A number, boolean or null is JSON in an Input; only a nested value is JSON in a
    TextArea. ctrl+e hands the focused text field (else `content`, else every argument as
    JSON) to $VISUAL / $EDITOR with tower suspended, and reads it back.
    """

    DEFAULT_CSS = """
    ArgsDialog > Vertical { overflow-y: auto; }
    ArgsDialog Label.field { color: $text-muted; margin-top: 1; }
    ArgsDialog TextArea.text { height: 14; }
    ArgsDialog TextArea.json { height: 6; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Approve with these arguments", priority=True),
        Binding("ctrl+e", "editor", "Edit in $EDITOR", priority=True),
    ]

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        super().__init__()
        self.tool = tool
        self.args = dict(args)

    @staticmethod
    def kind_of(name: str, value: Any) -> str:
        """line / text (strings), scalar (JSON in an Input) or json (nested, in a TextArea)."""
        if isinstance(value, str):
            return "text" if "\n" in value or name == "content" or len(value) > 200 else "line"
        if value is None or isinstance(value, bool | int | float):
            return "scalar"
        return "json"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Edit the arguments of {self.tool}, then approve", classes="title")
            for i, (name, value) in enumerate(self.args.items()):
                kind = self.kind_of(name, value)
                label = name + (" (JSON)" if kind in ("scalar", "json") else "")
                yield Label(label, classes="field")
                if kind == "line":
                    yield Input(value=value, id=f"arg-{i}")
                elif kind == "scalar":
                    yield Input(value=json.dumps(value), id=f"arg-{i}")
                elif kind == "text":
                    yield TextArea(value, language=None, id=f"arg-{i}", classes="text")
                else:
                    text = json.dumps(value, indent=2, ensure_ascii=False)
                    yield TextArea(text, language=None, id=f"arg-{i}", classes="json")
            if not self.args:
                yield Label(f"{self.tool} has no arguments")
            yield Label("", classes="error", id="error")
            yield Label("ctrl+s approve with these arguments · ctrl+e $EDITOR · escape cancel")

    def on_mount(self) -> None:
        texts = [n for n, v in self.args.items() if self.kind_of(n, v) == "text"]
        if texts:  # a file's content: what one edits most
            self.field(texts[0]).focus()

    def field(self, name: str) -> Input | TextArea:
        """The widget editing one argument."""
        widget = self.query_one(f"#arg-{list(self.args).index(name)}")
        assert isinstance(widget, Input | TextArea)
        return widget

    def values(self) -> dict[str, Any]:
        """The arguments as edited; ValueError naming the field when one is not valid."""
        out: dict[str, Any] = {}
        for name, value in self.args.items():
            widget = self.field(name)
            text = widget.value if isinstance(widget, Input) else widget.text
            if self.kind_of(name, value) in ("line", "text"):
                out[name] = text
                continue
            try:
                out[name] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: not valid JSON ({exc})") from None
        return out

    def _error(self, text: str) -> None:
        self.query_one("#error", Label).update(text)

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        try:
            value = self.values()
        except ValueError as exc:
            self._error(str(exc))
            return
        self.dismiss(value)

    async def action_editor(self) -> None:
        try:
            current = self.values()
        except ValueError as exc:
            self._error(f"{exc} — fix it before opening the editor")
            return
        # The text in a focused text box, else `content`, else a focused line, else all.
        focused = self.focused
        here: str | None = None
        if focused is not None and focused.id and focused.id.startswith("arg-"):
            here = list(self.args)[int(focused.id[4:])]
            here = here if isinstance(current[here], str) else None
        name = here if isinstance(focused, TextArea) else None
        if name is None:
            name = "content" if isinstance(current.get("content"), str) else here
        if name is not None:  # one text: the file holds the text itself
            old = current[name]
            path = current.get("path")
            base = path.rsplit("/", 1)[-1] if isinstance(path, str) else ""
            suffix = base[base.rfind(".") :] if "." in base[1:] else ""
            new = self._run_editor(old, suffix or ".txt")
            if new is None:
                return
            if not old.endswith("\n") and new.endswith("\n") and not new.endswith("\n\n"):
                new = new[:-1]  # the newline editors add on saving
            edited = {**current, name: new}
        else:  # every argument, as one JSON object
            text = json.dumps(current, indent=2, ensure_ascii=False) + "\n"
            new = self._run_editor(text, ".json")
            if new is None:
                return
            try:
                value = json.loads(new)
            except json.JSONDecodeError as exc:
                self._error(f"not valid JSON from the editor ({exc}); nothing changed")
                return
            if not isinstance(value, dict):
                self._error("the arguments must be a JSON object; nothing changed")
                return
            edited = value
        self.args = edited
        await self.recompose()
        if name is not None:
            self.field(name).focus()
        self._error("")

    def _run_editor(self, text: str, suffix: str) -> str | None:
        """Runs $VISUAL / $EDITOR on a temporary file holding text, tower suspended meanwhile;
        the file's text afterwards, or None (with the reason shown) when that failed."""
        import os
        import shlex
        import subprocess
        import tempfile

        from textual.app import SuspendNotSupported

        command = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
        fd, path = tempfile.mkstemp(prefix="tower-args-", suffix=suffix)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            try:
                with self.app.suspend():
                    done = subprocess.run([*command, path], check=False)
            except SuspendNotSupported:
                self._error("this terminal cannot hand over to an editor; edit the fields here")
                return None
            except OSError as exc:
                self._error(f"could not run {command[0]!r}: {exc.strerror or exc}")
                return None
            if done.returncode != 0:
                self._error(f"{command[0]} exited with status {done.returncode}; nothing changed")
                return None
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        finally:
            os.unlink(path)


class AmountDialog(_Dialog):
    """A positive dollar amount (raise a budget)."""

    def __init__(self, title: str, suggestion: float) -> None:
        super().__init__()
        self.title_text = title
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Input(value=f"{self.suggestion:.4f}", id="amount", type="number")
            yield Label("", classes="error", id="error")
            yield Label("USD to add · enter to confirm · escape to cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            value = float(event.value)
        except ValueError:
            value = -1.0
        if value <= 0:
            self.query_one("#error", Label).update("enter a positive amount")
            return
        self.dismiss(value)


@dataclass(frozen=True)
class GrantRequest:
    args: dict[str, str]
    agent: str | None
    minutes: float


class GrantDialog(_Dialog):
    """ "Allow calls like this one for a while": the rule's globs, its scope and its time box."""

    def __init__(self, tool: str, suggest: dict[str, str], agent: str) -> None:
        super().__init__()
        self.tool = tool
        self.suggest = suggest
        self.agent = agent

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Allow {self.tool} calls like this one for a while", classes="title")
            for name, glob in self.suggest.items():
                yield Label(f"{name} matches (glob; * is any text)")
                yield Input(value=glob, id=f"arg-{name}", classes="arg")
            if not self.suggest:
                yield Label(f"every call of {self.tool}, whatever its arguments")
            yield Label("for")
            yield Select(
                [(f"agent {self.agent} only", "agent"), ("every agent", "all")],
                value="agent",
                allow_blank=False,
                id="scope",
            )
            yield Label("minutes")
            yield Input(value="10", id="minutes", type="number")
            yield Label("", classes="error", id="error")
            yield Label("enter to approve this call and allow the like · escape to cancel")

    def on_mount(self) -> None:
        self.query_one("#minutes", Input).focus()

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        try:
            minutes = float(self.query_one("#minutes", Input).value)
        except ValueError:
            minutes = 0.0
        if not 0 < minutes <= 24 * 60:
            self.query_one("#error", Label).update("minutes: between 0 and 1440")
            return
        args = {}
        for name in self.suggest:
            glob = self.query_one(f"#arg-{name}", Input).value.strip()
            if not glob:
                self.query_one("#error", Label).update(f"{name}: give a glob (* for any)")
                return
            args[name] = glob
        scope = self.query_one("#scope", Select).value
        self.dismiss(GrantRequest(args, self.agent if scope == "agent" else None, minutes))


@dataclass(frozen=True)
class SpawnRequest:
    """What the spawn dialog asks for: a typed task, or (`task`) one more thread of a project
    task, which keeps its workspace, script and check. For a task, `prompt` None keeps the
    task's own and `budget_usd` None the task's budget."""

    agent: str
    prompt: str | None
    model: str | None
    budget_usd: float | None
    task: str | None = None
    workspace: str | None = None  # a typed task's folder, relative to the project root


class SpawnDialog(_Dialog):
    """A new thread: agent template, task text, workspace, model, budget; or a copy of one of
    the project's tasks, showing the id it will get, its workspace, script, check and budget.

    Tab moves between fields, enter (in a text field) or ctrl+s spawns, escape cancels."""

    DEFAULT_CSS = """
    SpawnDialog > Vertical { overflow-y: auto; }
    SpawnDialog #task-info { color: $text-muted; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Spawn", priority=True),
    ]

    def __init__(
        self, agents: list[str], models: list[str], tasks: Sequence[TaskCopy] = ()
    ) -> None:
        super().__init__()
        self.agents = agents
        self.models = models
        # What spawning each project task would start now (tower.core.supervisor.TaskCopy).
        self.tasks = {copy.task.id: copy for copy in tasks}
        self.chosen: TaskCopy | None = None
        self._filled_prompt = ""
        self._filled_budget = ""

    @staticmethod
    def _one_line(text: str) -> str:
        return " ".join(text.split())

    def _option(self, copy: TaskCopy) -> str:
        about = copy.title or self._one_line(copy.prompt)
        return f"{copy.task.id} · {about[:60]}"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Spawn a thread", classes="title")
            if self.tasks:
                # First: most spawns repeat a task of the project (enter opens the list).
                yield Label("Start from a task of the project (optional)")
                yield Select(
                    [(self._option(c), tid) for tid, c in self.tasks.items()],
                    prompt="none: a new task, typed below",
                    id="template",
                )
                yield Label("", id="task-info")
            yield Label("Agent")
            yield Select(
                [(a, a) for a in self.agents], value=self.agents[0], allow_blank=False, id="agent"
            )
            yield Label("Prompt")
            yield Input(placeholder="What should the agent do?", id="prompt")
            yield Label("Workspace: a folder of the project (optional; default: an empty one)")
            yield Input(placeholder="e.g. notes", id="workspace")
            yield Label("Model (default: the agent's cascade)")
            yield Select([(m, m) for m in self.models], id="model")
            yield Label("Budget for this thread in USD (optional)")
            yield Input(placeholder="e.g. 0.05", id="budget", type="number")
            yield Label("", classes="error", id="error")
            yield Label("tab next field · enter or ctrl+s spawn · escape cancel")

    def on_mount(self) -> None:
        # The task list when the project has tasks (enter opens it), else the prompt.
        first = self.query("#template") if self.tasks else None
        (first.first() if first else self.query_one("#prompt", Input)).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "template":
            value = event.value
            self.choose(self.tasks.get(value) if isinstance(value, str) else None)

    def choose(self, copy: TaskCopy | None) -> None:
        """Fills the fields from a project task (None: back to a typed task)."""
        prompt = self.query_one("#prompt", Input)
        workspace = self.query_one("#workspace", Input)
        budget = self.query_one("#budget", Input)
        agent = self.query_one("#agent", Select)
        info = self.query_one("#task-info", Label)
        self.query_one("#error", Label).update("")
        if copy is None:
            if self.chosen is not None:
                if prompt.value == self._filled_prompt:
                    prompt.value = ""
                if budget.value == self._filled_budget:
                    budget.value = ""
                workspace.value = ""
            self.chosen = None
            workspace.placeholder = "e.g. notes"
            agent.disabled = workspace.disabled = False
            info.update("")
            return
        self.chosen = copy
        task = copy.task
        if task.agent in self.agents:
            agent.value = task.agent
        agent.disabled = True  # the task's agent, workspace, script and check stay
        workspace.value = task.workspace or ""
        workspace.placeholder = "none: an empty folder"
        workspace.disabled = True
        prompt.value = self._filled_prompt = self._one_line(copy.prompt)
        prompt.cursor_position = 0
        self._filled_budget = f"{copy.budget_usd:g}" if copy.budget_usd is not None else ""
        budget.value = self._filled_budget
        steps = len(copy.script or ())
        info.update(
            "\n".join(
                [
                    f"thread id: {copy.thread_id} · agent {task.agent} · priority {task.priority}",
                    "workspace: "
                    + (f"{task.workspace}/" if task.workspace else "none (an empty folder)"),
                    f"script: {f'{steps} step(s)' if steps else 'none'}"
                    f" · check: {'yes' if task.check is not None else 'none'}"
                    " · budget: "
                    + (f"${copy.budget_usd:g}" if copy.budget_usd is not None else "none"),
                ]
            )
        )
        prompt.focus()  # enter spawns from here

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.action_submit()

    def action_submit(self) -> None:
        error = self.query_one("#error", Label)
        prompt = self.query_one("#prompt", Input).value.strip()
        if not prompt:
            error.update("describe the task first")
            return
        budget_text = self.query_one("#budget", Input).value.strip()
        budget = None
        if budget_text:
            try:
                budget = float(budget_text)
            except ValueError:
                budget = -1.0
            if budget <= 0:
                error.update("the budget must be a positive number")
                return
        model = self.query_one("#model", Select).value
        model_name = model if isinstance(model, str) else None
        copy = self.chosen
        if copy is not None:
            self.dismiss(
                SpawnRequest(
                    agent=copy.task.agent,
                    prompt=None if prompt == self._filled_prompt.strip() else prompt,
                    model=model_name,
                    budget_usd=None if budget_text == self._filled_budget else budget,
                    task=copy.task.id,
                )
            )
            return
        agent = self.query_one("#agent", Select).value
        workspace = self.query_one("#workspace", Input).value.strip()
        self.dismiss(
            SpawnRequest(
                agent=str(agent),
                prompt=prompt,
                model=model_name,
                budget_usd=budget,
                workspace=workspace or None,
            )
        )
