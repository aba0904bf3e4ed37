"""Colour themes as TOML files → `textual.theme.Theme`, plus live reloading with watchfiles.

A theme file holds `name` (optional, defaults to the file stem), `dark`, the colours
`primary`, `secondary`, `accent`, `warning`, `error`, `success`, `foreground`, `background`,
`surface`, `panel`, an optional `boost`, and an optional `[variables]` table of extra Textual
theme variables (strings). Colours are anything `textual.color.Color.parse` accepts.

Themes come from `theme_dirs()`: the bundled folder first, then the user's
`<config dir>/themes`; a user file overrides a bundled theme of the same name. A broken file
is reported as one line naming the file and the key, never fatal: the other themes load.

This module does not import the Textual app; the app registers what it gets here.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from textual.color import Color, ColorParseError
from textual.theme import Theme
from watchfiles import Change

from tower.core.watch import run_callback, watch_paths
from tower.resources import config_dir, themes_dir

THEME_SUFFIX = ".toml"
COLOUR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)

ThemesCallback = Callable[[dict[str, Theme], list[str]], Awaitable[object] | object]


class ThemeError(Exception):
    """A theme file that cannot be used. `str(exc)` is one line naming the file and key."""

    def __init__(self, path: Path, message: str, key: str | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.key = key


def _colour(value: str) -> str:
    try:
        Color.parse(value)
    except ColorParseError:
        raise ValueError(
            f"{value!r} is not a colour (expected e.g. '#1e90ff', 'rgb(30,144,255)', "
            "'hsl(210,100%,56%)' or a colour name)"
        ) from None
    return value


class ThemeFile(BaseModel):
    """The contents of one theme file, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr | None = Field(default=None, min_length=1, pattern=r"^\S(.*\S)?$")
    dark: StrictBool
    primary: StrictStr
    secondary: StrictStr
    accent: StrictStr
    warning: StrictStr
    error: StrictStr
    success: StrictStr
    foreground: StrictStr
    background: StrictStr
    surface: StrictStr
    panel: StrictStr
    boost: StrictStr | None = None
    variables: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    @field_validator(*COLOUR_KEYS)
    @classmethod
    def _is_colour(cls, value: str | None) -> str | None:
        return None if value is None else _colour(value)

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, '-', '_')")
        return value

    def to_theme(self, default_name: str) -> Theme:
        colours = {key: getattr(self, key) for key in COLOUR_KEYS}
        return Theme(
            name=self.name or default_name,
            dark=self.dark,
            variables=dict(self.variables),
            **colours,
        )


def _key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "root"


def _describe(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(ThemeFile.model_fields)
        return f"unknown key; expected one of {allowed}"
    if kind == "missing":
        return "missing required key"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def load_theme_file(path: str | Path) -> Theme:
    """Read and validate one theme file; raises ThemeError naming the file and the key."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ThemeError(path, f"cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ThemeError(path, f"not valid TOML: {exc}") from None
    try:
        parsed = ThemeFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = _key(errors[0]["loc"])
        message = "; ".join(f"{_key(e['loc'])}: {_describe(e)}" for e in errors)
        raise ThemeError(path, message, key=first) from None
    return parsed.to_theme(default_name=path.stem)


def _theme_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix == THEME_SUFFIX and not p.name.startswith(".") and p.is_file()
    )


def load_theme_dir(path: str | Path) -> tuple[dict[str, Theme], list[str]]:
    """Every `*.toml` theme in one folder (not recursive), by theme name, plus one error line
    per file that could not be used. A missing folder gives no themes and no errors."""
    directory = Path(path)
    themes: dict[str, Theme] = {}
    origin: dict[str, Path] = {}
    errors: list[str] = []
    if not directory.is_dir():
        return themes, errors
    try:
        files = _theme_files(directory)
    except OSError as exc:
        return themes, [f"{directory}: cannot list theme folder: {exc.strerror or exc}"]
    for file in files:
        try:
            theme = load_theme_file(file)
        except ThemeError as exc:
            errors.append(str(exc))
            continue
        if theme.name in origin:
            errors.append(
                f"{file}: name: theme {theme.name!r} is already defined by {origin[theme.name]}"
            )
            continue
        themes[theme.name] = theme
        origin[theme.name] = file
    return themes, errors


def theme_dirs() -> list[Path]:
    """Where themes come from, lowest priority first: bundled, then the user's folder."""
    return [themes_dir(), config_dir() / "themes"]


def load_themes(dirs: Iterable[str | Path] | None = None) -> tuple[dict[str, Theme], list[str]]:
    """All themes from `dirs` (default `theme_dirs()`); a later folder overrides an earlier
    one for a theme of the same name. Returns the themes by name and the error lines."""
    themes: dict[str, Theme] = {}
    errors: list[str] = []
    for directory in theme_dirs() if dirs is None else dirs:
        found, problems = load_theme_dir(directory)
        themes.update(found)
        errors.extend(problems)
    return themes, errors


async def watch_themes(
    dirs: Iterable[str | Path],
    on_change: ThemesCallback,
    stop_event: asyncio.Event | None = None,
    *,
    ready: asyncio.Event | None = None,
    debounce: int = 1600,
    step: int = 50,
    force_polling: bool | None = None,
    poll_delay_ms: int = 300,
) -> None:
    """Watch the theme folders; after every change to a `*.toml` in them, reload all of
    them (as `load_themes(dirs)`) and call `on_change(themes, errors)` (awaited if it
    returns an awaitable). Only folders that exist now are watched; with none it returns at
    once. Runs until `stop_event` is set or the task is cancelled. `ready` (optional) is set
    once changes are being watched. The other options go to `watchfiles.awatch`."""
    all_dirs = [Path(d) for d in dirs]
    existing = [d for d in all_dirs if d.is_dir()]
    if not existing:
        if ready is not None:
            ready.set()
        return

    def is_theme(_change: Change, path: str) -> bool:
        name = Path(path).name
        return name.endswith(THEME_SUFFIX) and not name.startswith(".")

    async def reload() -> None:
        themes, errors = load_themes(all_dirs)
        await run_callback(on_change, themes, errors)

    options = dict(
        debounce=debounce, step=step, force_polling=force_polling, poll_delay_ms=poll_delay_ms
    )
    await watch_paths(existing, is_theme, reload, stop_event, ready, options)
