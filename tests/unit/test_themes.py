"""Theme files → Textual themes: the shipped themes, errors that name file and key, the user
folder overriding the bundled one, and live reloading through watchfiles."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.app import App
from textual.color import Color
from textual.theme import Theme

from tests.helpers import save
from tower.core.watch import watch_file
from tower.resources import themes_dir
from tower.ui.themes import (
    ThemeError,
    load_theme_dir,
    load_theme_file,
    load_themes,
    theme_dirs,
    watch_themes,
)

SHIPPED = {
    "dark.toml": ("tower-dark", True),
    "light.toml": ("tower-light", False),
    "high-contrast.toml": ("tower-high-contrast", True),
}

# Native notifications (inotify), reported 20 ms after the last change. Not polling:
# watchfiles' poll watcher keeps mtimes in whole seconds and misses a second write within
# the same second (samuelcolvin/watchfiles#319), which is exactly what a fast test does.
FAST = {"force_polling": False, "step": 20, "debounce": 400}
TIMEOUT = 30.0  # a cap that only a hung watcher reaches


def theme_toml(name: str | None = None, primary: str = "#336699", **extra: str) -> str:
    lines = [f'name = "{name}"'] if name else []
    lines += [
        "dark = true",
        f'primary = "{primary}"',
        'secondary = "#445566"',
        'accent = "#ffaa00"',
        'warning = "#ffcc00"',
        'error = "#ff3333"',
        'success = "#33cc66"',
        'foreground = "#dddddd"',
        'background = "#101010"',
        'surface = "#181818"',
        'panel = "#202020"',
    ]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        c = Color.parse(colour)

        def channel(v: int) -> float:
            s = v / 255
            return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

        return 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# --- shipped themes ------------------------------------------------------------------------


def test_shipped_theme_files_are_the_expected_ones() -> None:
    assert sorted(p.name for p in themes_dir().glob("*.toml")) == sorted(SHIPPED)


@pytest.mark.parametrize("filename", sorted(SHIPPED))
def test_shipped_theme_loads(filename: str) -> None:
    name, dark = SHIPPED[filename]
    theme = load_theme_file(themes_dir() / filename)
    assert isinstance(theme, Theme)
    assert theme.name == name
    assert theme.dark is dark
    variables = theme.to_color_system().generate()
    assert variables["primary"].lower() == Color.parse(theme.primary).hex.lower()


async def test_shipped_themes_apply_in_a_textual_app() -> None:
    """Every variable a theme sets must survive Textual's CSS (a bad one breaks parsing)."""
    themes, errors = load_themes([themes_dir()])
    assert errors == []
    app = App()
    for theme in themes.values():
        app.register_theme(theme)
    async with app.run_test(size=(60, 10)) as pilot:
        for name in sorted(themes):
            app.theme = name
            await pilot.pause()
            assert app.current_theme.name == name
            assert app.get_css_variables()["primary"]


def test_high_contrast_is_high_contrast() -> None:
    theme = load_theme_file(themes_dir() / "high-contrast.toml")
    assert (Color.parse(theme.background).hex, Color.parse(theme.foreground).hex) == (
        "#000000",
        "#FFFFFF",
    )
    for key in ("primary", "secondary", "accent", "warning", "error", "success"):
        assert contrast(getattr(theme, key), theme.background) >= 7, key


@pytest.mark.parametrize("filename", ["dark.toml", "light.toml"])
def test_regular_themes_are_readable(filename: str) -> None:
    theme = load_theme_file(themes_dir() / filename)
    assert contrast(theme.foreground, theme.background) >= 7
    for key in ("primary", "secondary", "accent", "warning", "error", "success"):
        assert contrast(getattr(theme, key), theme.background) >= 4.5, key


# --- one file ------------------------------------------------------------------------------


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    theme = load_theme_file(save(tmp_path / "ocean.toml", theme_toml()))
    assert theme.name == "ocean"


def test_optional_boost_and_variables(tmp_path: Path) -> None:
    text = theme_toml("x", boost='"#ffffff10"') + '[variables]\nfooter-key-foreground = "red"\n'
    theme = load_theme_file(save(tmp_path / "x.toml", text))
    assert theme.boost == "#ffffff10"
    assert theme.variables == {"footer-key-foreground": "red"}


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (theme_toml() + "primary = \n", None, "not valid TOML"),
        (theme_toml(colour='"#ffffff"'), "colour", "unknown key"),
        (theme_toml(primary="nope"), "primary", "'nope' is not a colour"),
        (theme_toml().replace('panel = "#202020"\n', ""), "panel", "missing required key"),
        (theme_toml(dark='"yes"').replace("dark = true\n", ""), "dark", "boolean"),
        (theme_toml() + "[variables]\nfooter = 3\n", "variables.footer", "string"),
    ],
    ids=["bad-toml", "unknown-key", "bad-colour", "missing-key", "bad-dark", "bad-variable"],
)
def test_broken_file_names_file_and_key(
    tmp_path: Path, text: str, key: str | None, words: str
) -> None:
    path = save(tmp_path / "broken.toml", text)
    with pytest.raises(ThemeError) as info:
        load_theme_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert words in message
    assert info.value.key == key
    if key:
        assert f": {key}: " in message


def test_unreadable_file_is_a_theme_error(tmp_path: Path) -> None:
    with pytest.raises(ThemeError, match="cannot read"):
        load_theme_file(tmp_path / "absent.toml")


# --- folders -------------------------------------------------------------------------------


def test_dir_keeps_good_themes_and_reports_bad_ones(tmp_path: Path) -> None:
    save(tmp_path / "good.toml", theme_toml())
    save(tmp_path / "bad.toml", theme_toml(primary="nope"))
    save(tmp_path / "notes.txt", "not a theme")
    save(tmp_path / "twin.toml", theme_toml("good"))
    themes, errors = load_theme_dir(tmp_path)
    assert list(themes) == ["good"]
    assert len(errors) == 2
    assert errors[0].startswith(f"{tmp_path / 'bad.toml'}: primary:")
    assert errors[1].startswith(f"{tmp_path / 'twin.toml'}: name:")
    assert "already defined" in errors[1]


def test_missing_dir_is_empty(tmp_path: Path) -> None:
    assert load_theme_dir(tmp_path / "nope") == ({}, [])


def test_user_folder_overrides_packaged_theme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOWER_CONFIG_DIR", str(tmp_path))
    assert theme_dirs() == [themes_dir(), tmp_path / "themes"]
    save(tmp_path / "themes" / "mine.toml", theme_toml("tower-dark", primary="#ff0000"))
    themes, errors = load_themes()
    assert errors == []
    assert themes["tower-dark"].primary == "#ff0000"
    assert {"tower-light", "tower-high-contrast"} <= set(themes)


# --- watching ------------------------------------------------------------------------------


class Recorder:
    """Records callbacks; `until(pred)` resolves on the first call after which pred holds."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._waits: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __call__(self, *args: object) -> None:
        self.calls.append(args)
        for pred, fut in list(self._waits):
            if not fut.done() and pred():
                fut.set_result(None)
                self._waits.remove((pred, fut))

    async def until(self, pred: Callable[[], bool]) -> None:
        if self.calls and pred():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits.append((pred, fut))
        await asyncio.wait_for(fut, TIMEOUT)

    @property
    def last(self) -> tuple:
        return self.calls[-1]


async def start(coro_fn: Callable[..., object], *args: object, **kwargs: object):
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(coro_fn(*args, stop_event=stop, ready=ready, **FAST, **kwargs))
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    return stop, task


async def test_watch_themes_picks_up_edits_new_files_and_broken_edits(tmp_path: Path) -> None:
    packaged, user = tmp_path / "packaged", tmp_path / "user"
    save(packaged / "one.toml", theme_toml())
    save(packaged / "three.toml", theme_toml())
    user.mkdir()
    rec = Recorder()
    stop, task = await start(watch_themes, [packaged, user, tmp_path / "absent"], rec)

    def themes() -> dict[str, Theme]:
        return rec.last[0]

    def errors() -> list[str]:
        return rec.last[1]

    save(packaged / "one.toml", theme_toml(primary="#aa0000"))
    await rec.until(lambda: themes()["one"].primary == "#aa0000")
    assert errors() == []

    save(user / "two.toml", theme_toml())
    await rec.until(lambda: "two" in themes())
    assert set(themes()) == {"one", "two", "three"}

    save(packaged / "one.toml", theme_toml(primary="not-a-colour"))
    await rec.until(lambda: bool(errors()))
    assert set(themes()) == {"two", "three"}
    assert len(errors()) == 1
    assert errors()[0].startswith(f"{packaged / 'one.toml'}: primary:")

    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


async def test_watch_themes_awaits_async_callback_and_stops_on_cancel(tmp_path: Path) -> None:
    save(tmp_path / "one.toml", theme_toml())
    seen: asyncio.Future[dict[str, Theme]] = asyncio.get_running_loop().create_future()

    async def on_change(themes: dict[str, Theme], errors: list[str]) -> None:
        await asyncio.sleep(0)
        if not seen.done():
            seen.set_result(themes)

    _stop, task = await start(watch_themes, [tmp_path], on_change)
    save(tmp_path / "new.toml", theme_toml())
    assert "new" in await asyncio.wait_for(seen, TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)


async def test_watch_themes_with_no_existing_dir_returns(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    rec = Recorder()
    ready = asyncio.Event()
    # Returns on its own (a watcher that hung here would time out), without a stop event.
    await asyncio.wait_for(watch_themes([missing], rec, ready=ready), TIMEOUT)
    assert ready.is_set()  # a caller waiting for `ready` is not left hanging
    assert rec.calls == []  # nothing was loaded or reported
    assert not missing.exists()  # the folder is not created behind the user's back


async def test_watch_file_fires_for_the_file_not_a_sibling(tmp_path: Path) -> None:
    target = save(tmp_path / "tower.toml", "a = 1\n")
    sibling = save(tmp_path / "other.toml", "b = 1\n")
    rec, control = Recorder(), Recorder()

    def on_change(path: Path) -> None:  # the path, and what the file held at the call
        rec(path, path.read_text(encoding="utf-8") if path.exists() else None)

    stop, task = await start(watch_file, target, on_change)
    # A second watcher of the same folder, on the sibling: once it has fired, the siblings'
    # changes have gone through a batch of the first watcher too (same events, same timing),
    # so a call they caused would have read the target before its edit below.
    stop_control, control_task = await start(watch_file, sibling, control)
    save(sibling, "b = 2\n")
    (tmp_path / "notes.txt").write_text("sibling", encoding="utf-8")
    await control.until(lambda: True)

    save(target, "a = 2\n")
    await rec.until(lambda: rec.last == (target, "a = 2\n"))
    assert rec.calls == [(target, "a = 2\n")]  # no call for the siblings before it

    target.unlink()
    await rec.until(lambda: rec.last == (target, None))
    assert rec.calls == [(target, "a = 2\n"), (target, None)]

    for event, watcher in ((stop, task), (stop_control, control_task)):
        event.set()
        await asyncio.wait_for(watcher, TIMEOUT)


async def test_watch_file_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await watch_file(tmp_path / "nope" / "tower.toml", Recorder())
