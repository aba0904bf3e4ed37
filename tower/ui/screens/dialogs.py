"""Modal dialogs: confirm, one-line text, JSON arguments, budget amount, grant, spawn.

Each returns its result through `dismiss`; escape cancels (returns None)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

DIALOG_CSS = """
_Dialog { align: center middle; background: $background 60%; }
_Dialog > Vertical {
    width: 80; max-width: 95%; height: auto; max-height: 90%;
    border: thick $accent; background: $surface; padding: 1 2;
}
_Dialog Label { width: 100%; }
_Dialog Label.title { text-style: bold; margin-bottom: 1; }
_Dialog Label.error { color: $error; }
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
    """Edit a tool call's arguments as JSON before approving them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Approve with these arguments", priority=True),
    ]

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        super().__init__()
        self.tool = tool
        self.args = args

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Edit the arguments of {self.tool}, then approve", classes="title")
            yield TextArea(
                json.dumps(self.args, indent=2, ensure_ascii=False), language=None, id="args"
            )
            yield Label("", classes="error", id="error")
            yield Label("ctrl+s approve with these arguments · escape cancel")

    def action_save(self) -> None:
        text = self.query_one("#args", TextArea).text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            self.query_one("#error", Label).update(f"not valid JSON: {exc}")
            return
        if not isinstance(value, dict):
            self.query_one("#error", Label).update("the arguments must be a JSON object")
            return
        self.dismiss(value)


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
    agent: str
    prompt: str
    model: str | None
    budget_usd: float | None


class SpawnDialog(_Dialog):
    """A new thread: agent template, task text, model, budget."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Spawn", priority=True),
    ]

    def __init__(self, agents: list[str], models: list[str], tasks: list[tuple[str, str]]) -> None:
        super().__init__()
        self.agents = agents
        self.models = models
        self.tasks = tasks  # (label, prompt) of the project's tasks, as templates

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Spawn a thread", classes="title")
            yield Label("Agent")
            yield Select(
                [(a, a) for a in self.agents], value=self.agents[0], allow_blank=False, id="agent"
            )
            if self.tasks:
                yield Label("Start from a task of the project (optional)")
                yield Select([(label, prompt) for label, prompt in self.tasks], id="template")
            yield Label("Task")
            yield Input(placeholder="What should the agent do?", id="prompt")
            yield Label("Model (default: the agent's cascade)")
            yield Select([(m, m) for m in self.models], id="model")
            yield Label("Budget for this thread in USD (optional)")
            yield Input(placeholder="e.g. 0.05", id="budget", type="number")
            yield Label("", classes="error", id="error")
            yield Label("enter or ctrl+s spawn · escape cancel")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "template" and isinstance(event.value, str):
            self.query_one("#prompt", Input).value = event.value

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.action_submit()

    def action_submit(self) -> None:
        prompt = self.query_one("#prompt", Input).value.strip()
        if not prompt:
            self.query_one("#error", Label).update("describe the task first")
            return
        budget_text = self.query_one("#budget", Input).value.strip()
        budget = None
        if budget_text:
            try:
                budget = float(budget_text)
            except ValueError:
                budget = -1.0
            if budget <= 0:
                self.query_one("#error", Label).update("the budget must be a positive number")
                return
        model = self.query_one("#model", Select).value
        agent = self.query_one("#agent", Select).value
        self.dismiss(
            SpawnRequest(
                agent=str(agent),
                prompt=prompt,
                model=model if isinstance(model, str) else None,
                budget_usd=budget,
            )
        )
