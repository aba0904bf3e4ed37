"""A unified diff as a rich renderable: Syntax with the "diff" lexer, coloured from the theme.

Added lines take the theme's success colour, removed lines its error colour, hunk headers its
accent; no background of its own, so it sits on whatever the widget draws.
"""

from __future__ import annotations

from pygments.token import Generic, Token
from rich.style import Style
from rich.syntax import ANSISyntaxTheme, Syntax, SyntaxTheme
from textual.theme import Theme


def diff_theme(theme: Theme | None = None) -> SyntaxTheme:
    """The diff lexer's tokens in the theme's colours (plain ANSI colours without a theme)."""
    added = (theme.success if theme else None) or "green"
    removed = (theme.error if theme else None) or "red"
    hunk = (theme.accent if theme else None) or "cyan"
    return ANSISyntaxTheme(
        {
            Generic.Inserted: Style(color=added),
            Generic.Deleted: Style(color=removed),
            Generic.Subheading: Style(color=hunk, bold=True),
            Generic.Heading: Style(bold=True),
            Generic.Strong: Style(bold=True),
            Token.Text: Style(),
        }
    )


def diff_view(diff: str, theme: Theme | None = None, *, wrap: bool = True) -> Syntax:
    """The diff, ready for a Static or a RichLog."""
    return Syntax(diff, "diff", theme=diff_theme(theme), word_wrap=wrap, background_color=None)
