"""`tower web`: a running fleet's TUI in a real browser (Debian's headless Chromium, driven
by Selenium), behind the token printed in its URL: a missing or wrong token gets 403; a
key pressed in the page decides an item, and the fleet's own log records the decision."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, db_events, one_line_error, tower, tower_cmd, tower_env
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
    runtime = Path(tempfile.mkdtemp(prefix="tw-"))
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    proj = tmp_path / "tax_return"
    shutil.copytree(REPO / "sample_projects" / "tax_return", proj)
    db = tmp_path / "t.db"
    session = tower("up", proj, "--db", db, env=env, home=tmp_path).stdout.strip()
    port = _free_port()
    web = subprocess.Popen(
        tower_cmd("web", session, "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tower_env(env, home=tmp_path),
        start_new_session=True,
    )
    assert web.stdout is not None
    line = web.stdout.readline().strip()  # printed once it is about to listen
    assert line.startswith(f"tower web: http://127.0.0.1:{port}/?token="), line
    url = line.removeprefix("tower web: ")
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):  # until it answers (each try is a real request)
        with contextlib.suppress(OSError):
            _status(base + "/")
            break
    yield {"env": env, "db": db, "session": session, "url": url, "base": base, "home": tmp_path}
    os.killpg(web.pid, signal.SIGTERM)
    web.wait(timeout=30)
    web.stdout.close()
    assert web.stderr is not None
    web.stderr.close()
    for row in json.loads(tower("ls", "--json", env=env).stdout or "[]"):
        if row["status"] == "running":
            os.kill(int(row["pid"]), signal.SIGKILL)
    shutil.rmtree(runtime, ignore_errors=True)


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
    rows = json.loads(tower("ls", "--json", env=served["env"]).stdout)
    return dict(rows[0].get("views") or {}) if rows else {}


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_a_key_in_a_real_browser_decides_an_item_in_the_fleet(served: dict[str, Any]) -> None:
    """Headless Chromium opens the page; `d` typed into the terminal refuses the question
    on screen; the fleet's log has that decision, taken by the person."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    db, session = served["db"], served["session"]

    def decided() -> list[dict[str, Any]]:
        return [
            e.payload
            for e in db_events(db, session)
            if e.kind is EventKind.INBOX_CLOSED and e.payload.get("by") == "human"
        ]

    try:
        driver.get(served["url"])
        deadline = time.monotonic() + 120
        keys = []
        while time.monotonic() < deadline:  # the terminal's input, then the fleet's questions
            keys = driver.find_elements(By.CSS_SELECTOR, "textarea.xterm-helper-textarea")
            if keys and sum(e.kind is EventKind.INBOX_OPENED for e in db_events(db, session)) >= 3:
                break
        assert keys, "the page never showed its terminal"
        # The tab runs `tower attach`: once it is one of the fleet's views, one key.
        while time.monotonic() < deadline and not _views(served).get("tui"):
            pass
        assert _views(served).get("tui") == 1
        keys[0].send_keys("d")
        while time.monotonic() < deadline and not decided():
            pass  # each check is a read of the fleet's log
        closed = decided()
        assert closed, "no decision reached the fleet"
        assert closed[0]["resolution"] in ("denied", "declined")
    finally:
        driver.quit()
