"""Notifications that respect attention: tell the person when items need them and they are
looking elsewhere.

Two layers:

- `Notifier` is pure: it is told which items opened and closed (with their timestamps),
  whether the terminal is focused, and the time; `due(now)` says whether to notify now and
  with what text. At most one notice per `interval_s`; an item counts only once it has been
  open for `SETTLE_S` (so a rule that resolves it at once is never announced), and an item
  closed before the notice fires is never counted, whoever closed it.
- `Notifications` joins a Notifier to a running TowerApp and to the channels switched on in
  `[notify]`: the terminal bell, an OSC 9 / OSC 777 escape sequence (wrapped for tmux),
  `notify-send`, and a JSON webhook (ntfy's JSON publish format, or Slack's `{"text": …}`).
  Nothing here blocks the UI: the subprocess and the HTTP POST run in a worker, and a
  failing channel is reported once in a toast, never raised.

The secret rule: a notice carries only the project name, thread ids, item ids, item kinds
and the inbox summary as the screen shows it (the bus has already redacted it), with
control characters removed so an agent cannot smuggle escape sequences into the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import unicodedata
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tower.core.payloads import InboxClosed, InboxOpened, payload_as
from tower.ui.keymap import NotifyConfig
from tower.ui.widgets.inbox import summary_of

if TYPE_CHECKING:
    from textual.app import App

    from tower.core.events import Event
    from tower.core.state import TowerState

__all__ = [
    "Notice",
    "Notifications",
    "Notifier",
    "NotifyConfig",
    "Waiting",
    "osc_sequence",
    "post_webhook",
    "webhook_body",
]

log = logging.getLogger("tower.notify")

SETTLE_S = 1.0  # an item must stay open this long before it is announced
SUMMARY_CHARS = 100
WEBHOOK_TIMEOUT_S = 5.0
CLOSED_MEMORY = 2000  # closed item ids remembered, so a late "opened" is ignored

# kind → (singular, plural), the words the inbox uses
_KIND_WORDS = {
    "approval": ("approval", "approvals"),
    "question": ("question", "questions"),
    "budget": ("budget stop", "budget stops"),
    "escalation": ("handoff", "handoffs"),
    "failure": ("failure", "failures"),
}


def clean(text: str, limit: int = SUMMARY_CHARS) -> str:
    """One line of printable text: control characters (ESC, BEL, C1…) become spaces,
    runs of whitespace one space, cut to `limit` characters with an ellipsis."""
    out = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Waiting:
    """An inbox item that needs the person, as the notifier knows it."""

    item: str
    thread: str
    kind: str
    summary: str
    opened: float


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification: what every channel sends."""

    title: str
    message: str
    count: int
    counts: tuple[tuple[str, int], ...]
    first: Waiting
    items: tuple[str, ...]


def describe(waiting: list[Waiting], first: Waiting) -> tuple[str, tuple[tuple[str, int], ...]]:
    """The text and the counts by kind, e.g.
    "3 items need you: 2 approvals, 1 question — first: i4 t2: write_file a.py"."""
    counts = tuple(Counter(w.kind for w in waiting).most_common())
    parts = []
    for kind, n in counts:
        one, many = _KIND_WORDS.get(kind, (kind, kind))
        parts.append(f"{n} {one if n == 1 else many}")
    head = "1 item needs you" if len(waiting) == 1 else f"{len(waiting)} items need you"
    what = f" {first.summary}" if first.summary else ""
    name = f"{first.item} {first.thread}:{what}" if what else f"{first.item} {first.thread}"
    return f"{head}: {', '.join(parts)} — first: {name}", counts


@dataclass
class Notifier:
    """Decides when to notify and with what text; no I/O, no clock of its own.

    when: "unfocused" counts only items that open while the terminal is not focused, and
    forgets them when it regains focus; "always" counts every item; "never" none.
    """

    when: str = "unfocused"
    interval_s: float = 30.0
    settle_s: float = SETTLE_S
    title: str = "tower"
    focused: bool = True
    fired: int = 0
    _waiting: dict[str, Waiting] = field(default_factory=dict)
    _announced: set[str] = field(default_factory=set)
    _closed: dict[str, str] = field(default_factory=dict)
    _last_fired: float | None = None

    def focus(self, focused: bool) -> None:
        if focused == self.focused:
            return
        self.focused = focused
        if focused and self.when == "unfocused":
            self._waiting.clear()  # the person is looking at them now
            self._announced.clear()

    def opened(self, item: Waiting) -> bool:
        """An item opened; True if it will be counted."""
        if self.when == "never" or item.item in self._closed:
            return False
        if self.when == "unfocused" and self.focused:
            return False
        self._waiting[item.item] = item
        return True

    def closed(self, item: str, by: str = "") -> None:
        """An item closed (decided by the person, a rule, or dropped): never counted again."""
        self._waiting.pop(item, None)
        self._announced.discard(item)
        self._closed[item] = by
        if len(self._closed) > CLOSED_MEMORY:
            del self._closed[next(iter(self._closed))]

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def due(self, now: float) -> Notice | None:
        """The notice to send now, or None. Counts every open item that is settled or
        already announced; fires only when one of them has not been announced yet."""
        if not self._waiting or self.when == "never":
            return None
        if self.when == "unfocused" and self.focused:
            return None
        if self._last_fired is not None and now - self._last_fired < self.interval_s:
            return None
        counted = [
            w
            for w in self._waiting.values()
            if w.item in self._announced or now - w.opened >= self.settle_s
        ]
        fresh = [w for w in counted if w.item not in self._announced]
        if not fresh:
            return None
        counted.sort(key=lambda w: (w.opened, w.item))
        first = min(fresh, key=lambda w: (w.opened, w.item))
        message, counts = describe(counted, first)
        self._announced.update(w.item for w in counted)
        self._last_fired = now
        self.fired += 1
        return Notice(
            title=self.title,
            message=message,
            count=len(counted),
            counts=counts,
            first=first,
            items=tuple(w.item for w in counted),
        )


# --- channels -------------------------------------------------------------------------------


def osc_sequence(which: str, title: str, body: str, tmux: bool = False) -> str:
    """The escape sequence(s) for a terminal notification.

    OSC 9 (iTerm2, kitty, WezTerm, foot, Ghostty, Windows Terminal): `ESC ] 9 ; text BEL`.
    The text starts with the title ("tower …"), never a digit, so terminals that read
    `9;<digit>` as a ConEmu command (progress, tab title) do not. OSC 777 (rxvt-unicode, VTE
    terminals, foot, WezTerm, Ghostty): `ESC ] 777 ; notify ; title ; body BEL`; the title may
    not contain ";". Inside tmux each sequence is wrapped in tmux's DCS passthrough
    `ESC P tmux; … ESC \\` with every ESC doubled (tmux ≥ 3.3 needs `allow-passthrough on`).
    """
    title = clean(title, 80)
    body = clean(body, 400)
    seqs = []
    if which in ("9", "both"):
        seqs.append(f"\x1b]9;{title}: {body}\x07")
    if which in ("777", "both"):
        seqs.append(f"\x1b]777;notify;{title.replace(';', ',')};{body}\x07")
    if tmux:
        seqs = ["\x1bPtmux;" + s.replace("\x1b", "\x1b\x1b") + "\x1b\\" for s in seqs]
    return "".join(seqs)


def _slack_escape(text: str) -> str:
    # Slack reads <…> as links and mentions (<!channel>): escape as its docs say.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ntfy_target(url: str) -> tuple[str, str]:
    """ "https://ntfy.sh/mytopic" → ("https://ntfy.sh/", "mytopic"): ntfy's JSON publish
    format is POSTed to the server's root with the topic in the body."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError("an ntfy webhook URL names the topic, e.g. https://ntfy.sh/mytopic")
    prefix = "/".join(segments[:-1])
    root = "/" + (prefix + "/" if prefix else "")
    return urlunsplit((parts.scheme, parts.netloc, root, "", "")), segments[-1]


def webhook_body(fmt: str, url: str, notice: Notice) -> tuple[str, dict[str, Any]]:
    """(URL to POST to, JSON body) for the webhook format: "ntfy" or "slack"."""
    title, message = clean(notice.title, 80), clean(notice.message, 400)
    if fmt == "slack":
        return url, {"text": _slack_escape(f"{title}: {message}")}
    root, topic = ntfy_target(url)
    return root, {
        "topic": topic,
        "title": title,
        "message": message,
        "priority": 4,
        "tags": ["bell"],
    }


class WebhookError(Exception):
    """A webhook that could not be delivered; the text names the host, never the URL
    (a Slack webhook URL is itself a secret)."""


def post_webhook(url: str, body: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT_S) -> int:
    """POSTs JSON; returns the HTTP status. Blocking: call it in a worker thread."""
    host = urlsplit(url).hostname or "?"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "tower"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook to {host} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise WebhookError(f"webhook to {host} failed: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise WebhookError(f"webhook to {host} failed: {reason}") from None


async def notify_send(program: str, title: str, body: str) -> int:
    """Runs notify-send and reaps it; returns its exit status."""
    proc = await asyncio.create_subprocess_exec(
        program,
        "--app-name=tower",
        "--",
        clean(title, 80),
        clean(body, 400),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), WEBHOOK_TIMEOUT_S)


# --- the app's side -------------------------------------------------------------------------


class Notifications:
    """The Notifier wired to a running app and the channels `[notify]` switches on.

    The app calls `saw_closed` as it reads the bus's events (on its tick), `focus` from
    its AppBlur/AppFocus handlers, and `tick` once per UI tick with the items that opened.
    """

    def __init__(self, app: App[Any], config: NotifyConfig | None, title: str = "tower") -> None:
        self.app = app
        self.config = config or NotifyConfig()
        c = self.config
        self.channels = [
            name
            for name, on in (
                ("bell", c.bell),
                ("osc", c.osc is not None),
                ("desktop", c.desktop),
                ("webhook", c.webhook is not None),
            )
            if on
        ]
        self.enabled = c.when != "never" and bool(self.channels)
        self.notifier = Notifier(when=c.when, interval_s=c.interval_s, title=title)
        self.sent: list[Notice] = []
        self.delivered: list[tuple[str, Notice]] = []  # (channel, notice) that went out
        self.in_flight = 0
        self._closed: deque[tuple[str, str]] = deque()
        self._warned: set[str] = set()

    # facts

    def saw_closed(self, ev: Event) -> None:
        """An INBOX_CLOSED event: queued until the next `tick`."""
        if self.enabled:
            p = payload_as(ev, InboxClosed)
            self._closed.append((p.item, p.by))

    def focus(self, focused: bool) -> None:
        self.notifier.focus(focused)

    def tick(self, state: TowerState, opened: Iterable[Event], now: float, focused: bool) -> None:
        if not self.enabled:
            return
        notifier = self.notifier
        notifier.focus(focused)
        for ev in opened:
            item_id = payload_as(ev, InboxOpened).item
            item = state.inbox.get(item_id)
            if item is None:  # already closed (a rule, the person, the thread ended)
                notifier.closed(item_id)
                continue
            notifier.opened(
                Waiting(item_id, ev.thread or "", str(item.kind), clean(summary_of(item)), ev.ts)
            )
        while self._closed:
            notifier.closed(*self._closed.popleft())
        for item_id in notifier.waiting():
            if item_id not in state.inbox:  # closed, whatever the order events came in
                notifier.closed(item_id)
        notice = notifier.due(now)
        if notice is not None:
            self.send(notice)

    # sending

    def send(self, notice: Notice) -> None:
        """Every switched-on channel; the slow ones in workers. Never raises."""
        self.sent.append(notice)
        c = self.config
        app = self.app
        if c.bell:
            app.bell()
            self.delivered.append(("bell", notice))
        if c.osc is not None:
            self._write(osc_sequence(c.osc, notice.title, notice.message, "TMUX" in os.environ))
            self.delivered.append(("osc", notice))
        if c.desktop:
            program = shutil.which("notify-send")
            if program is None:
                self._warn_once("desktop", "notify-send not found: [notify] desktop sends nothing")
            else:
                self._spawn(self._desktop(program, notice))
        if c.webhook is not None:
            self._spawn(self._webhook(c.webhook, c.webhook_format, notice))

    def _write(self, data: str) -> None:
        driver = getattr(self.app, "_driver", None)
        if self.app.is_headless or driver is None:
            return  # as App.bell: nothing to write to
        driver.write(data)  # the driver's writer thread flushes

    def _spawn(self, coro: Any) -> None:
        self.in_flight += 1
        self.app.run_worker(coro, group="notify", exit_on_error=False)

    async def _desktop(self, program: str, notice: Notice) -> None:
        try:
            status = await notify_send(program, notice.title, notice.message)
            if status != 0:
                self._warn_once("desktop", f"notify-send exited with status {status}")
            else:
                self.delivered.append(("desktop", notice))
        except (OSError, TimeoutError) as exc:
            self._warn_once("desktop", f"notify-send failed: {exc}")
        finally:
            self.in_flight -= 1

    async def _webhook(self, url: str, fmt: str, notice: Notice) -> None:
        try:
            target, body = webhook_body(fmt, url, notice)
            await asyncio.to_thread(post_webhook, target, body)
            self.delivered.append(("webhook", notice))
        except (WebhookError, ValueError) as exc:
            self._warn_once("webhook", str(exc))
        finally:
            self.in_flight -= 1

    def _warn_once(self, channel: str, text: str) -> None:
        log.warning("%s", text)
        if channel in self._warned:
            return
        self._warned.add(channel)
        self.app.notify(
            f"{text} (reported once)", title="notification not sent", severity="warning"
        )
