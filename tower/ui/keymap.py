"""The user's UI config file, `<config dir>/keys.toml`: key bindings and a few UI settings.

```toml
[keys]
kill = "X"          # action id = a key, or comma-separated keys (Textual key names)
approve = "a,y"

[ui]
bell = true
theme = "tower-dark"

[notify]            # when items need you and the terminal is not focused (tower.ui.notify)
when = "unfocused"  # or "always", "never"
bell = true
osc = "9"           # "9", "777", "both" or false
desktop = true      # notify-send, where installed
webhook = "https://ntfy.sh/mytopic"
webhook_format = "ntfy"   # or "slack"
interval_s = 30
```

Action ids are the ids of the app's bindings, so `UiConfig.keymap()` can go straight to
`App.set_keymap`. A missing file means defaults. Problems are reported as one line naming the
file and the key (`ConfigError`); unknown action ids only by `validate_keys`, which is given
the ids the app knows. This module does not import the Textual app.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from textual.keys import Keys, _character_to_key, key_to_character

from tower.resources import config_dir

CONFIG_FILE = "keys.toml"
MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
# Named keys, plus the names Textual gives printable characters ("slash", "question_mark").
_KEY_NAMES = frozenset(k.value for k in Keys) | {
    _character_to_key(chr(code)) for code in range(33, 127)
}


class ConfigError(Exception):
    """A config file that cannot be used. `str(exc)` is one line naming the file and key."""

    def __init__(self, path: Path, message: str, key: str | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.key = key


def _key_problem(key: str) -> str | None:
    """Why `key` (one key, maybe with modifiers, e.g. "ctrl+x") is not a key, or None."""
    if len(key) == 1:
        return None if key.isprintable() and not key.isspace() else f"{key!r} is not a key"
    *mods, name = key.split("+")
    if not name:
        return f"{key!r} is not a key (the + key is 'plus')"
    unknown = [m for m in mods if m not in MODIFIERS]
    if unknown:
        return f"{unknown[0]!r} in {key!r} is not a modifier ({', '.join(sorted(MODIFIERS))})"
    if len(name) == 1 or name in _KEY_NAMES or key_to_character(name) is not None:
        return None
    return f"{key!r} is not a Textual key name (e.g. 'x', 'X', 'ctrl+x', 'f5', 'question_mark')"


def split_keys(value: str) -> list[str]:
    """The keys in a binding string: "a, y" → ["a", "y"]. Raises ValueError if not keys."""
    parts = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not part for part in parts):
        raise ValueError(f"{value!r} is not a key list (expected e.g. 'x' or 'a,y')")
    for part in parts:
        problem = _key_problem(part)
        if problem:
            raise ValueError(problem)
    return parts


def _normalise(value: str) -> str:
    """Textual's canonical form of a binding string: single characters become key names."""
    return ",".join(_character_to_key(k) if len(k) == 1 else k for k in split_keys(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _UiSection(_Strict):
    bell: StrictBool = False
    theme: StrictStr | None = Field(default=None, min_length=1)


class _NotifySection(_Strict):
    """[notify]: which channels tell the person that items need them (see tower.ui.notify)."""

    when: Literal["unfocused", "always", "never"] = "unfocused"
    bell: StrictBool = False
    osc: Literal["9", "777", "both"] | None = None
    desktop: StrictBool = False
    webhook_format: Literal["ntfy", "slack"] = "ntfy"
    webhook: StrictStr | None = None
    interval_s: StrictFloat = Field(default=30.0, ge=1.0, le=86400.0)

    @field_validator("osc", mode="before")
    @classmethod
    def _osc(cls, value: Any) -> Any:
        if value is False:
            return None
        if value is True:
            raise ValueError('say which: "9", "777" or "both" (false for none)')
        return str(value) if isinstance(value, int) else value

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL, e.g. https://ntfy.sh/mytopic")
        if info.data.get("webhook_format", "ntfy") == "ntfy" and not parts.path.strip("/"):
            raise ValueError("an ntfy URL names the topic, e.g. https://ntfy.sh/mytopic")
        return value


NotifyConfig = _NotifySection


class _File(_Strict):
    keys: dict[str, StrictStr] = Field(default_factory=dict)
    ui: _UiSection = Field(default_factory=_UiSection)
    notify: _NotifySection = Field(default_factory=_NotifySection)


_SECTIONS: dict[str, type[BaseModel]] = {"ui": _UiSection, "notify": _NotifySection}


class UiConfig(_Strict):
    """What keys.toml says: key overrides by action id, the bell, the theme name."""

    keys: dict[str, str] = Field(default_factory=dict)
    bell: bool = False
    theme: str | None = None
    notify: _NotifySection = Field(default_factory=_NotifySection)
    """[notify]: when and how to tell the person that items need them."""
    path: Path | None = None
    """The file this came from (None when built in code)."""

    def keymap(self) -> dict[str, str]:
        """The key overrides in the form `App.set_keymap` takes (canonical key names)."""
        return {action: _normalise(value) for action, value in self.keys.items()}


def config_path() -> Path:
    """Where keys.toml is read from: `<config dir>/keys.toml` (see tower.resources)."""
    return config_dir() / CONFIG_FILE


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "root"


def _describe(err: ErrorDetails, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model: type[BaseModel] = _File if len(loc) == 1 else _SECTIONS.get(loc[0], _UiSection)
        allowed = list(model.model_fields)
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        section = "top level" if len(loc) == 1 else f"[{loc[0]}]"
        return f"unknown key in {section}{hint}; expected one of {', '.join(allowed)}"
    if kind == "string_type" and loc[:1] == ("keys",):
        return 'expected a string of keys, e.g. "x" or "a,y"'
    if kind in ("dict_type", "model_type"):
        return "expected a table"
    if kind == "literal_error":
        expected = str(err["ctx"]["expected"]).replace(" or ", ", ")
        allowed = [a.strip("'") for a in expected.split(", ")]
        guess = difflib.get_close_matches(str(err.get("input")), allowed, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return f"expected one of {', '.join(allowed)}{hint}"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_config(text: str, path: Path) -> UiConfig:
    """Validate the text of a keys.toml; raises ConfigError naming `path` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]["loc"]
        message = "; ".join(f"{_loc(e['loc'])}: {_describe(e, e['loc'])}" for e in errors)
        raise ConfigError(path, message, key=_loc(first)) from None
    for action, value in parsed.keys.items():
        try:
            split_keys(value)
        except ValueError as exc:
            raise ConfigError(path, f"keys.{action}: {exc}", key=f"keys.{action}") from None
    return UiConfig(
        keys=parsed.keys,
        bell=parsed.ui.bell,
        theme=parsed.ui.theme,
        notify=parsed.notify,
        path=path,
    )


def load_config(path: str | Path | None = None) -> UiConfig:
    """Read keys.toml (default `config_path()`). A missing file gives the defaults."""
    file = Path(path) if path is not None else config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return UiConfig(path=file)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(file, f"cannot read: {reason}") from None
    return parse_config(text, file)


def validate_keys(
    config: UiConfig, known: set[str], defaults: Mapping[str, str] | None = None
) -> list[str]:
    """One line per problem with the [keys] table, given the action ids the app knows:
    unknown action ids, and one key bound to two actions; with the app's `defaults` (id →
    keys), also a key the table takes that another action keeps by default (the first
    binding would win, and the other verb would silently have no key)."""
    where = config.path if config.path is not None else CONFIG_FILE
    problems: list[str] = []
    for action in config.keys:
        if action not in known:
            guess = difflib.get_close_matches(action, sorted(known), n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"{where}: keys.{action}: unknown action{hint}")
    owner: dict[str, str] = {}
    mine = config.keymap()
    for action, value in mine.items():
        for key in value.split(","):
            if key in owner and owner[key] != action:
                problems.append(
                    f"{where}: keys.{action}: key {key!r} is also bound to {owner[key]!r}"
                )
            owner.setdefault(key, action)
    for action, value in (defaults or {}).items():
        if action in mine:
            continue
        for key in _normalise(value).split(","):
            if key in owner:
                problems.append(
                    f"{where}: keys.{owner[key]}: key {key!r} is the default key of {action!r}; "
                    f"give {action!r} another key too"
                )
    return problems


def resolve_keys(defaults: Mapping[str, str], config: UiConfig) -> dict[str, str]:
    """The effective binding string per action: the defaults overridden by the config
    (canonical key names). Unknown actions in the config are ignored here."""
    merged = {action: _normalise(keys) for action, keys in defaults.items()}
    for action, keys in config.keymap().items():
        if action in merged:
            merged[action] = keys
    return merged
