"""`o`: the policy in force — tower.toml's rules, the human's time-boxed grants (with the time
they have left, revocable with `d`), the defaults, and the MCP servers with their state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from tower.core.policy import READ_TOOLS
from tower.core.state import TowerState
from tower.ui.format import age

DEFAULTS = [
    ("allow", ", ".join(sorted(READ_TOOLS)), "default: reading inside the workspace"),
    ("allow", "ask_human, finish", "default: never gated"),
    ("ask", "everything else", "default: writes, the shell and MCP tools ask the human"),
]


def _args(rule: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in (rule.get("args") or {}).items())


class PolicyScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,o", "dismiss", "Close"),
        Binding("d,delete", "revoke", "Revoke grant"),
    ]
    DEFAULT_CSS = """
    PolicyScreen { align: center middle; background: $background 60%; }
    PolicyScreen > Vertical {
        width: 130; max-width: 95%; height: 85%; border: thick $accent;
        background: $surface; padding: 1 2;
    }
    PolicyScreen DataTable { height: 1fr; }
    PolicyScreen #servers { height: auto; max-height: 10; }
    PolicyScreen Label.title { text-style: bold; }
    PolicyScreen Label.hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(
        self,
        read: Callable[[Callable[[TowerState], Any]], Any],
        now: Callable[[], float],
        revoke: Callable[[str], Awaitable[Any]],
    ) -> None:
        super().__init__()
        self._read = read
        self._now = now
        self._revoke = revoke

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(
                "Policy · deny wins, then your grants, then ask, then allow, then the defaults",
                classes="title",
            )
            yield DataTable(id="rules", cursor_type="row", zebra_stripes=True)
            yield Label("MCP servers", classes="title")
            yield DataTable(id="servers", cursor_type="none", zebra_stripes=True)
            yield Label(
                "d revoke the selected grant · escape close · "
                "grant from the inbox with A on a tool approval",
                classes="hint",
            )

    def on_mount(self) -> None:
        rules = self.query_one("#rules", DataTable)
        rules.add_columns("action", "tool", "arguments", "agent", "left", "from")
        servers = self.query_one("#servers", DataTable)
        servers.add_columns("server", "status", "tools", "restarts", "detail")
        self.refresh_tables()
        self.set_interval(1.0, self.refresh_tables)
        rules.focus()

    def _snapshot(self, state: TowerState) -> tuple[list[Any], list[Any], list[Any]]:
        return (
            [dict(r) for r in state.policy],
            [dict(r) for r in state.grants.values()],
            [(name, dict(entry)) for name, entry in state.mcp.items()],
        )

    def refresh_tables(self) -> None:
        policy, grants, servers = self._read(self._snapshot)
        now = self._now()
        table = self.query_one("#rules", DataTable)
        keep = None  # the selected rule by key: a grant expiring must not shift `d` onto another
        if table.row_count:
            keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        order = {"deny": 0, "ask": 2, "allow": 3}
        rows: list[tuple[int, str, tuple[str, ...]]] = []
        for r in policy:
            cells = (r["action"], r["tool"], _args(r), r.get("agent") or "any", "session")
            rows.append((order.get(r["action"], 4), r["id"], (*cells, r["source"])))
        for g in grants:
            left = age(max((g.get("expires") or now) - now, 0.0))
            cells = ("allow", g["tool"], _args(g), g.get("agent") or "any", left)
            rows.append((1, g["id"], (*cells, g["source"])))
        rows.sort(key=lambda r: r[0])
        for _rank, rid, row in rows:
            table.add_row(*row, key=rid)
        for i, (action, tools, why) in enumerate(DEFAULTS):
            table.add_row(action, tools, "", "any", "always", why, key=f"default{i}")
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep))
        st = self.query_one("#servers", DataTable)
        st.clear()
        if not servers:
            st.add_row("(none configured)", "", "", "", "")
        for name, entry in servers:
            st.add_row(
                name,
                entry.get("status", "?"),
                str(len(entry.get("tools") or [])),
                str(entry.get("restarts", 0)),
                str(entry.get("detail", ""))[:80],
            )

    async def action_revoke(self) -> None:
        table = self.query_one("#rules", DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or ""
        if not key.startswith("g"):
            self.notify("only a time-boxed grant can be revoked here", severity="warning")
            return
        await self._revoke(key)
        self.refresh_tables()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
