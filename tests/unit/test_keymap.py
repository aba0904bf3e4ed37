"""keys.toml: key overrides and UI settings, with one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tower.resources import config_dir
from tower.ui.keymap import (
    ConfigError,
    UiConfig,
    config_path,
    load_config,
    resolve_keys,
    split_keys,
    validate_keys,
)

KNOWN = {"kill", "approve", "deny", "pause", "escalate"}

EXAMPLE = """\
[keys]
kill = "X"          # action id = key or comma-separated keys
approve = "a,y"

[ui]
bell = true
theme = "tower-dark"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config = load_config(path)
    assert config.keys == {"kill": "X", "approve": "a,y"}
    assert config.bell is True
    assert config.theme == "tower-dark"
    assert config.path == path
    assert validate_keys(config, KNOWN) == []


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml")
    assert (config.keys, config.bell, config.theme) == ({}, False, None)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert (config.keys, config.bell, config.theme) == ({}, False, None)


def test_config_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWER_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path
    assert config_path() == tmp_path / "keys.toml"
    (tmp_path / "keys.toml").write_text('[ui]\ntheme = "tower-light"\n', encoding="utf-8")
    assert load_config().theme == "tower-light"


def test_config_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("TOWER_CONFIG_DIR", raising=False)
    assert config_dir() == Path(platformdirs.user_config_dir("tower", appauthor=False))


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[keys\nkill = 'x'\n", None, "not valid TOML"),
        ("[ui]\nbel = true\n", "ui.bel", "did you mean 'bell'"),
        ("[keys]\nkill = 3\n", "keys.kill", "expected a string of keys"),
        ("[keys]\nkill = ['x']\n", "keys.kill", "expected a string of keys"),
        ("[ui]\nbell = 'yes'\n", "ui.bell", "boolean"),
        ("[ui]\ntheme = 5\n", "ui.theme", "string"),
        ("keys = 'x'\n", "keys", "expected a table"),
        ("[colors]\nx = 1\n", "colors", "unknown key in top level"),
        ("[keys]\nkill = 'a,,b'\n", "keys.kill", "is not a key list"),
        ("[keys]\nkill = 'bogus'\n", "keys.kill", "'bogus' is not a Textual key name"),
        ("[keys]\nkill = 'cmd+x'\n", "keys.kill", "'cmd' in 'cmd+x' is not a modifier"),
    ],
    ids=[
        "bad-toml",
        "unknown-ui-key",
        "int-key",
        "list-key",
        "bad-bell",
        "bad-theme",
        "keys-not-table",
        "unknown-table",
        "empty-key",
        "unknown-key-name",
        "unknown-modifier",
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str | None, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert words in message
    assert info.value.key == key
    if key:
        assert f": {key}: " in message


@pytest.mark.parametrize(
    "value",
    ["x", "X", "?", "ctrl+x", "ctrl+shift+up", "f5", "question_mark", "space", "slash, plus"],
)
def test_textual_key_names_accepted(value: str) -> None:
    assert split_keys(value)


def test_unknown_actions_only_with_known_ids(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[keys]\nkil = 'X'\nfrobnicate = 'f'\n"))
    assert config.keys == {"kil": "X", "frobnicate": "f"}
    problems = validate_keys(config, KNOWN)
    assert len(problems) == 2
    assert problems[0] == f"{config.path}: keys.kil: unknown action (did you mean 'kill'?)"
    assert problems[1] == f"{config.path}: keys.frobnicate: unknown action"


def test_same_key_for_two_actions_is_reported(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[keys]\nkill = 'x'\npause = 'p, x'\n"))
    problems = validate_keys(config, KNOWN)
    assert problems == [f"{config.path}: keys.pause: key 'x' is also bound to 'kill'"]


def test_a_key_another_verb_keeps_by_default_is_reported(tmp_path: Path) -> None:
    """kill = "X" would take the key of kill_tree (X by default): the first binding wins,
    so kill_tree would silently have no key. Remapping kill_tree as well is fine."""
    from tower.ui.app import VERBS

    known = {bid for bid, *_ in VERBS}
    defaults = {b: k for b, k, *_ in VERBS}
    config = load_config(write(tmp_path, '[keys]\nkill = "X"\n'))
    assert validate_keys(config, known, defaults) == [
        f"{config.path}: keys.kill: key 'X' is the default key of 'kill_tree'; "
        "give 'kill_tree' another key too"
    ]
    config = load_config(write(tmp_path, '[keys]\nkill = "X"\nkill_tree = "ctrl+x"\n'))
    assert validate_keys(config, known, defaults) == []
    # Question mark and friends compare in Textual's names: "?" is help's question_mark.
    config = load_config(write(tmp_path, '[keys]\nspawn = "?"\n'))
    assert "is the default key of 'help'" in validate_keys(config, known, defaults)[0]


def test_keymap_is_in_textual_canonical_form() -> None:
    config = UiConfig(keys={"approve": "a, y", "help": "?", "kill": "X"})
    assert config.keymap() == {"approve": "a,y", "help": "question_mark", "kill": "X"}


def test_resolve_keys_overrides_defaults() -> None:
    defaults = {"kill": "x", "approve": "a", "help": "?"}
    config = UiConfig(keys={"kill": "X", "unknown": "u"})
    assert resolve_keys(defaults, config) == {
        "kill": "X",
        "approve": "a",
        "help": "question_mark",
    }


async def test_a_keys_toml_rebinds_towers_own_app(tmp_path: Path) -> None:
    """A keys.toml override, loaded as the CLI loads it, rebinds tower's own app: the old key
    does nothing and each of the new keys does the verb."""
    from tests.tui_harness import ASK, project, task, tui, waiting_on
    from tower.core.events import ThreadState
    from tower.ui.app import VERBS
    from tower.ui.screens.dialogs import ConfirmDialog

    config = load_config(write(tmp_path, '[keys]\nkill = "K, ctrl+k"\n'))
    assert validate_keys(config, {bid for bid, *_ in VERBS}) == []
    async with tui(tmp_path, project(task(ASK, "t")), keymap=config.keymap()) as t:
        await t.ready(waiting_on(t, 1), "a question")
        assert t.app.key_of("kill") == "K, ^k"
        await t.press("x")
        await t.settle()
        assert not isinstance(t.app.screen, ConfirmDialog)
        assert t.view("t").state is ThreadState.WAITING
        await t.press("K")
        await t.screen_is(ConfirmDialog)
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))
        assert t.view("t").state is ThreadState.WAITING
        await t.press("ctrl+k")
        await t.screen_is(ConfirmDialog)
        await t.press("y")
        await t.until(lambda: t.view("t").state is ThreadState.KILLED, "t killed")
