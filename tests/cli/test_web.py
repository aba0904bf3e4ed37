"""`tower web`: a running fleet's TUI in a real browser (Debian's headless Chromium, driven
by Selenium), behind the token printed in its URL: a missing or wrong token gets 403;
keys pressed in the page decide the items the page shows (read back from the bytes it was
sent), and the fleet's own log records each decision."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleets import fleet_place, ls
from tests.helpers import db_events, one_line_error, tower, tower_cmd, tower_env
from tower.core.events import EventKind

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """tax_return as a fleet (`tower up`) and `tower web` serving it on a free port."""
    with fleet_place(tmp_path) as place:
        env, db = place["env"], place["db"]
        session = tower("up", place["proj"], "--db", db, env=env, home=tmp_path).stdout.strip()
        port = _free_port()
        web = subprocess.Popen(
            tower_cmd("web", session, "--port", str(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tower_env(env, home=tmp_path),
            start_new_session=True,
        )
        assert web.stdout is not None and web.stderr is not None
        line = web.stdout.readline().strip()  # printed once it is about to listen
        assert line.startswith(f"tower web: http://127.0.0.1:{port}/?token="), line
        url = line.removeprefix("tower web: ")
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):  # until it answers (each try is a real request)
            with contextlib.suppress(OSError):
                _status(base + "/")
                break
        yield {"env": env, "db": db, "session": session, "url": url, "base": base,
               "home": tmp_path}  # fmt: skip
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
        web.stdout.close()
        web.stderr.close()


def test_a_missing_or_wrong_token_gets_403(served: dict[str, Any]) -> None:
    base, url = served["base"], served["url"]
    assert _status(base + "/") == 403
    assert _status(base + "/?token=wrong") == 403
    assert _status(base + "/static/js/textual.js") == 403  # assets too, without the cookie
    assert _status(base + "/ws") == 403
    assert _status(url) == 200


def test_another_address_needs_the_flag_and_warns(served: dict[str, Any]) -> None:
    env, session = served["env"], served["session"]
    one_line_error(tower("web", session, "--host", "0.0.0.0", env=env), "--allow-remote")
    port = _free_port()
    proc = subprocess.Popen(
        tower_cmd("web", session, "--host", "0.0.0.0", "--port", str(port), "--allow-remote"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tower_env(env),
        start_new_session=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    warning = proc.stderr.readline()
    assert "warning: serving on 0.0.0.0" in warning and "token" in warning
    assert proc.stdout.readline().startswith(f"tower web: http://0.0.0.0:{port}/?token=")
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _views(served: dict[str, Any]) -> dict[str, int]:
    rows = ls(served["env"])
    return dict(rows[0].get("views") or {}) if rows else {}


# Injected before the page's own scripts: keeps a copy of every byte the page's terminal is
# sent, so the test reads the screen the person sees (xterm.js draws on a canvas, not in the
# DOM) with a terminal emulator of its own (pyte).
TAP = """
(() => {
  const Real = window.WebSocket;
  window.__tty = [];
  window.WebSocket = class extends Real {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (!(e.data instanceof ArrayBuffer)) return;
        const bytes = new Uint8Array(e.data);
        let s = "";
        for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
        window.__tty.push(btoa(s));
      });
    }
  };
})();
"""


class Screen:
    """The page's terminal as the person sees it: the bytes the page received, fed to a
    terminal emulator (larger than the page's: Textual places every line itself)."""

    def __init__(self, driver: Any) -> None:
        import pyte

        self.driver = driver
        self.screen = pyte.Screen(300, 120)
        self.stream = pyte.ByteStream(self.screen)

    def lines(self) -> list[str]:
        import base64

        chunks = self.driver.execute_script("const t = window.__tty; window.__tty = []; return t;")
        for chunk in chunks or []:
            self.stream.feed(base64.b64decode(chunk))
        return [line.rstrip() for line in self.screen.display]

    def target(self) -> str | None:
        """The inbox item the selection line names (`▶ i3 · chen · …`): what a key acts on."""
        for line in self.lines():
            m = re.search(r"▶ (i\d+) · ", line)
            if m:
                return m.group(1)
        return None


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_keys_in_a_real_browser_decide_the_items_on_screen(served: dict[str, Any]) -> None:
    """Headless Chromium opens the page. The question on screen is answered with `r`, its
    thread goes on to ask to write its return, `]` brings that approval on screen, and `a`
    approves it: the fleet's own log has each decision, taken by the person, on the very
    item the screen showed when the key was pressed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TAP})
    db, session = served["db"], served["session"]
    screen = Screen(driver)

    def log() -> list[Any]:
        return db_events(db, session)

    def closed(item: str) -> dict[str, Any] | None:
        return next(
            (
                e.payload
                for e in log()
                if e.kind is EventKind.INBOX_CLOSED and e.payload["item"] == item
            ),
            None,
        )

    def opened() -> dict[str, Any]:
        return {e.payload["item"]: e for e in log() if e.kind is EventKind.INBOX_OPENED}

    deadline = time.monotonic() + 180

    def until(pred: Any, what: str) -> Any:
        while time.monotonic() < deadline:  # each check reads the page or the fleet's log
            got = pred()
            if got:
                return got
        raise AssertionError(f"timed out waiting for {what}")

    try:
        driver.get(served["url"])
        keys = until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "textarea.xterm-helper-textarea"),
            "the page's terminal",
        )
        until(lambda: len(opened()) >= 3 and _views(served).get("tui") == 1, "the questions")
        question = until(screen.target, "an item on screen")
        assert opened()[question].payload["kind"] == "question"
        thread = opened()[question].thread
        keys[0].send_keys("r")
        until(lambda: any(f"{thread} asks:" in ln for ln in screen.lines()), "its reply dialog")
        keys[0].send_keys("Not reported: a gift.")
        keys[0].send_keys("\n")
        answer = until(lambda: closed(question), "the answer in the fleet's log")
        assert (answer["resolution"], answer["by"], answer["text"]) == (
            "answered",
            "human",
            "Not reported: a gift.",
        )

        def approval() -> str | None:
            return next(
                (
                    i
                    for i, e in opened().items()
                    if e.thread == thread and e.payload["kind"] == "approval" and not closed(i)
                ),
                None,
            )

        want = until(approval, "its write_file approval")
        for _ in range(10):  # `]` until the screen shows it (the inbox holds 3 items)
            if until(screen.target, "an item on screen") == want:
                break
            before = screen.target()
            keys[0].send_keys("]")
            until(lambda b=before: screen.target() not in (None, b), "the next item on screen")
        assert screen.target() == want
        keys[0].send_keys("a")
        done = until(lambda: closed(want), "the approval in the fleet's log")
        assert (done["resolution"], done["by"]) == ("approved", "human")
        # Nothing else was decided by a key: the other two questions are still open.
        humans = [e for e in log() if e.kind is EventKind.INBOX_CLOSED]
        assert sorted(c.payload["item"] for c in humans) == sorted([question, want])
    finally:
        driver.quit()
