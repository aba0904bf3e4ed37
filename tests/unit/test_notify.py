"""Notifications that respect attention: the coalescer on a fake clock, the channels' bytes
and bodies (a real local HTTP server), the [notify] config, and the app end to end: blurred,
an item opens, exactly one webhook POST names it; focused again, nothing more is sent.

Tests wait on conditions (pilot.pause() loops, a threading.Event from the server), never on
fixed sleeps.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from textual import events

from tests.helpers import write_project
from tests.tui_harness import pilot_until
from tower.core.project import load_project
from tower.ui.app import TowerApp
from tower.ui.keymap import ConfigError, NotifyConfig, UiConfig, load_config
from tower.ui.notify import (
    Notice,
    Notifier,
    Waiting,
    WebhookError,
    clean,
    ntfy_target,
    osc_sequence,
    post_webhook,
    webhook_body,
)

# --- the coalescer --------------------------------------------------------------------------


def waiting(item: str, at: float, kind: str = "approval", thread: str = "t1") -> Waiting:
    summary = {"approval": "write_file out.txt", "question": "Which year?"}.get(kind, "why")
    return Waiting(item, thread, kind, summary, at)


def blurred(**kwargs: Any) -> Notifier:
    n = Notifier(**kwargs)
    n.focus(False)
    return n


def test_one_notice_per_interval_with_counts_and_the_first_named() -> None:
    n = blurred(interval_s=30.0, settle_s=1.0, title="tower · demo")
    assert n.opened(waiting("i1", 0.0))
    assert n.due(0.5) is None  # not settled yet: a rule may still decide it
    first = n.due(1.0)
    assert first is not None
    assert first.title == "tower · demo"
    assert first.message == "1 item needs you: 1 approval — first: i1 t1: write_file out.txt"
    assert first.items == ("i1",)
    n.opened(waiting("i2", 2.0, thread="t2"))
    n.opened(waiting("i3", 3.0, "question", thread="t3"))
    for now in (4.0, 10.0, 30.9):
        assert n.due(now) is None  # within the interval: coalesced
    second = n.due(31.0)
    assert second is not None
    assert second.count == 3 and second.counts == (("approval", 2), ("question", 1))
    assert second.message.startswith("3 items need you: 2 approvals, 1 question — first: i2 t2")
    assert n.due(100.0) is None  # nothing new since
    assert n.fired == 2


def test_items_a_rule_resolved_never_notify() -> None:
    n = blurred(interval_s=30.0, settle_s=1.0)
    n.opened(waiting("i1", 0.0))
    n.closed("i1", by="rule r1")
    assert n.due(5.0) is None
    assert not n.opened(waiting("i1", 0.0))  # a late "opened" for a closed item is ignored
    n.opened(waiting("i2", 10.0))
    n.opened(waiting("i3", 10.0, "question"))
    n.closed("i3", by="rule:--approve all")  # auto-decided before the notice fires
    notice = n.due(11.0)
    assert notice is not None and notice.items == ("i2",) and notice.count == 1
    assert "question" not in notice.message
    assert n.fired == 1


def test_items_closed_by_anyone_before_the_notice_are_not_counted() -> None:
    n = blurred(interval_s=30.0, settle_s=1.0)
    n.opened(waiting("i1", 0.0))
    n.opened(waiting("i2", 0.0))
    n.closed("i2", by="human")
    notice = n.due(2.0)
    assert notice is not None and notice.items == ("i1",)


def test_focus_forgets_what_the_person_can_see_and_focused_items_never_count() -> None:
    n = Notifier(interval_s=30.0, settle_s=1.0)
    assert not n.opened(waiting("i1", 0.0))  # focused: the toast is enough
    n.focus(False)
    assert n.due(5.0) is None  # i1 opened while they were looking
    n.opened(waiting("i2", 6.0))
    n.focus(True)
    assert n.due(20.0) is None and n.waiting() == []
    n.focus(False)
    assert n.due(40.0) is None  # i2 was seen when they came back
    n.opened(waiting("i3", 41.0))
    notice = n.due(42.0)
    assert notice is not None and notice.items == ("i3",)


def test_when_always_and_never() -> None:
    always = Notifier(when="always", interval_s=30.0, settle_s=1.0)
    always.opened(waiting("i1", 0.0))
    assert always.due(1.0) is not None  # focused or not
    never = blurred(when="never", interval_s=30.0, settle_s=1.0)
    assert not never.opened(waiting("i1", 0.0))
    assert never.due(100.0) is None


def test_text_is_one_clean_line() -> None:
    assert clean("rm -rf /\x1b]0;owned\x07\nnext\tline") == "rm -rf / ]0;owned next line"
    assert clean("x" * 300, 10) == "x" * 9 + "…"
    assert clean("\x9b31mred") == "31mred"  # C1 controls too


# --- terminal escape sequences ----------------------------------------------------------------


def test_osc_sequences_and_tmux_passthrough() -> None:
    assert osc_sequence("9", "tower · p", "1 item needs you") == (
        "\x1b]9;tower · p: 1 item needs you\x07"
    )
    assert osc_sequence("777", "tower; p", "body; more") == (
        "\x1b]777;notify;tower, p;body; more\x07"
    )
    both = osc_sequence("both", "t", "b")
    assert both == "\x1b]9;t: b\x07\x1b]777;notify;t;b\x07"
    wrapped = osc_sequence("9", "t", "b\x1b]evil\x07", tmux=True)
    assert wrapped == "\x1bPtmux;\x1b\x1b]9;t: b ]evil\x07\x1b\\"


# --- webhooks, against a real local server ----------------------------------------------------


@dataclass
class Hook:
    url: str
    status: int = 200
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    got: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def hook() -> Iterator[Hook]:
    """An HTTP server on 127.0.0.1 recording each POST: (path, content type, JSON body)."""
    box: list[Hook] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"null")
            h = box[0]
            h.requests.append((self.path, self.headers.get("Content-Type", ""), body))
            h.got.set()
            self.send_response(h.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Hook(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


NOTICE = Notice(
    title="tower · demo",
    message="2 items need you: 1 approval, 1 question — first: i1 t1: <!channel> write_file a.py",
    count=2,
    counts=(("approval", 1), ("question", 1)),
    first=waiting("i1", 0.0),
    items=("i1", "i2"),
)


def test_ntfy_json_is_posted_to_the_server_root_with_the_topic(hook: Hook) -> None:
    assert ntfy_target("https://ntfy.sh/mytopic") == ("https://ntfy.sh/", "mytopic")
    assert ntfy_target("https://x.org/ntfy/alerts/") == ("https://x.org/ntfy/", "alerts")
    target, body = webhook_body("ntfy", f"{hook.url}/tower-alerts", NOTICE)
    assert post_webhook(target, body) == 200
    [(path, ctype, sent)] = hook.requests
    assert path == "/" and ctype == "application/json"
    assert sent == {
        "topic": "tower-alerts",
        "title": "tower · demo",
        "message": NOTICE.message,
        "priority": 4,
        "tags": ["bell"],
    }


def test_slack_body_is_text_with_mentions_escaped(hook: Hook) -> None:
    target, body = webhook_body("slack", f"{hook.url}/services/T0/B0/secret", NOTICE)
    assert post_webhook(target, body) == 200
    [(path, ctype, sent)] = hook.requests
    assert path == "/services/T0/B0/secret" and ctype == "application/json"
    assert list(sent) == ["text"]
    assert sent["text"].startswith("tower · demo: 2 items need you: 1 approval, 1 question")
    assert "&lt;!channel&gt;" in sent["text"] and "<!channel>" not in sent["text"]


def test_a_failing_webhook_names_the_host_never_the_url(hook: Hook) -> None:
    hook.status = 500
    with pytest.raises(WebhookError) as err:
        post_webhook(f"{hook.url}/services/T0/B0/secret", {"text": "x"})
    assert "HTTP 500" in str(err.value) and "127.0.0.1" in str(err.value)
    assert "secret" not in str(err.value)
    with pytest.raises(WebhookError) as err:  # nothing listens on port 9 of localhost
        post_webhook("http://127.0.0.1:9/secret", {"text": "x"}, timeout=2)
    assert "secret" not in str(err.value)


# --- config ---------------------------------------------------------------------------------


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_notify_section_parses(tmp_path: Path) -> None:
    path = keys_file(
        tmp_path,
        '[ui]\nbell = true\n\n[notify]\nwhen = "always"\nbell = true\nosc = 777\n'
        'desktop = true\nwebhook = "https://ntfy.sh/mine"\ninterval_s = 10\n',
    )
    config = load_config(path)
    assert config.bell is True  # [ui] bell still rings with each toast
    n = config.notify
    assert (n.when, n.bell, n.osc, n.desktop, n.webhook, n.webhook_format, n.interval_s) == (
        "always",
        True,
        "777",
        True,
        "https://ntfy.sh/mine",
        "ntfy",
        10.0,
    )
    assert UiConfig().notify == NotifyConfig()  # off unless switched on
    assert load_config(keys_file(tmp_path, "[notify]\nosc = false\n")).notify.osc is None


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[notify]\nwhen = 'unfocussed'\n", "notify.when", "did you mean 'unfocused'"),
        ("[notify]\nintervall = 5\n", "notify.intervall", "did you mean 'interval_s'"),
        ("[notify]\nosc = true\n", "notify.osc", '"9", "777" or "both"'),
        ("[notify]\nosc = '99'\n", "notify.osc", "expected one of 9, 777, both"),
        ("[notify]\nwebhook = 'ftp://x.org/t'\n", "notify.webhook", "http:// or https://"),
        ("[notify]\nwebhook = 'https://ntfy.sh'\n", "notify.webhook", "names the topic"),
        ("[notify]\nwebhook_format = 'slak'\n", "notify.webhook_format", "did you mean 'slack'"),
        ("[notify]\ninterval_s = 0.5\n", "notify.interval_s", "greater than or equal to 1"),
        ("[notify]\ndesktop = 'yes'\n", "notify.desktop", "valid boolean"),
        ("notify = 3\n", "notify", "expected a table"),
    ],
)
def test_notify_errors_name_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = keys_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")
    assert words in message
    assert err.value.key == key


def test_a_slack_webhook_needs_no_topic(tmp_path: Path) -> None:
    text = "[notify]\nwebhook_format = 'slack'\nwebhook = 'https://hooks.slack.com/x'\n"
    assert load_config(keys_file(tmp_path, text)).notify.webhook_format == "slack"


# --- the app, end to end --------------------------------------------------------------------

PROJECT = """
[project]
name = "notify"
retry_backoff_s = 0

[[agents]]
name = "a"
cascade = ["sim/instant"]
"""

WRITE = [
    {"say": "Writing.", "tool": "write_file", "args": {"path": "out.txt", "content": "x"}},
    {"tool": "finish", "args": {"answer": "ok"}},
]


async def test_blurred_app_posts_one_webhook_naming_the_item_and_none_once_focused(
    tmp_path: Path, hook: Hook
) -> None:
    root = write_project(tmp_path / "proj", PROJECT)
    shift = [0.0]  # moves the app's clock past the interval without waiting for it

    def clock() -> float:
        return time.time() + shift[0]

    config = NotifyConfig(webhook=f"{hook.url}/tower-test", interval_s=30.0)
    app = TowerApp(load_project(root), tmp_path / "t.db", watch=False, clock=clock, notify=config)
    note = app.notifications
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(pilot, app.booted.is_set, "the app boots")
        sup, core = app.sup, app.core
        assert sup is not None and core is not None

        async def spawn(task_id: str) -> str:
            tid = await core.call(lambda: sup.spawn("a", "write", task_id=task_id, script=WRITE))
            await pilot_until(
                pilot,
                lambda: any(i.thread == tid for i in app.state().inbox.values()),
                f"{tid}'s approval",
            )
            return next(i.id for i in app.state().inbox.values() if i.thread == tid)

        app.post_message(events.AppBlur())
        await pilot_until(pilot, lambda: not app.app_focus and not note.notifier.focused, "blurred")
        first = await spawn("writer")
        shift[0] = 2.0  # past the settle time (a rule had its chance to decide it)
        await pilot_until(pilot, lambda: hook.requests, "the webhook POST")
        await pilot_until(pilot, lambda: note.in_flight == 0, "the webhook worker ends")
        [(path, _ctype, body)] = hook.requests
        assert path == "/" and body["topic"] == "tower-test"
        assert body["title"] == "tower · notify"
        assert body["message"] == (
            f"1 item needs you: 1 approval — first: {first} writer: write_file out.txt"
        )
        assert [n.items for n in note.sent] == [(first,)]

        app.post_message(events.AppFocus())
        await pilot_until(pilot, lambda: app.app_focus and note.notifier.focused, "focused again")
        second = await spawn("again")
        shift[0] = 120.0  # past the interval and the settle time
        seen = app.ticks
        await pilot_until(pilot, lambda: app.ticks >= seen + 3, "three ticks with the item open")
        assert second in app.state().inbox
        assert len(hook.requests) == 1 and len(note.sent) == 1 and note.in_flight == 0

        # The same path still works once the terminal loses focus again.
        app.post_message(events.AppBlur())
        await pilot_until(pilot, lambda: not note.notifier.focused, "blurred again")
        third = await spawn("third")
        shift[0] = 240.0
        await pilot_until(pilot, lambda: len(hook.requests) == 2, "the second POST")
        message = hook.requests[1][2]["message"]
        assert message.startswith("1 item needs you") and f"first: {third} third" in message
        await pilot_until(pilot, lambda: note.in_flight == 0, "the webhook worker ends")
        await app.shutdown()
        app.exit(0)
