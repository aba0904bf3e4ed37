"""The fleet's commands: `tower up`, `ls`, `down`, and steering a running fleet from scripts.

`tower up DIR` starts the project's session as a background service (`tower serve`, in its
own process group, so a closed terminal does not stop it) and prints its session id once
views can connect; a service already running for that project is reused, and one that
crashed is resumed. The steering verbs (`inbox`, `approve`, `deny`, `reply`, `spawn`,
`pause`, `resume`, `kill`) are commands over the service's socket, each with `--json`;
a refusal is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tower.cli import UsageError
from tower.core import fleet as core_fleet
from tower.core.client import ServiceClient
from tower.core.progress import rate_text
from tower.core.service import Listed, listed
from tower.core.wire import ServiceError
from tower.ui.format import age

DOWN_TIMEOUT_S = 60.0


class FleetError(UsageError):
    """One line (or a few) for stderr, exit code 2."""


def add_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="start a project's fleet as a background service")
    up.add_argument("project", metavar="DIR", help="project folder with a tower.toml")
    up.add_argument("--db", metavar="PATH", help="session database (default: user data dir)")

    srv = sub.add_parser("serve", help="run a fleet in the foreground (what `up` starts)")
    srv.add_argument("project", metavar="DIR", nargs="?", help="project folder")
    srv.add_argument("--resume", metavar="SESSION", help="continue this recorded session")
    srv.add_argument("--db", metavar="PATH", help="session database (default: user data dir)")

    ls = sub.add_parser("ls", help="list running (and crashed) fleets")
    ls.add_argument("--json", action="store_true", help="print a JSON list")

    att = sub.add_parser("attach", help="open the TUI on a running fleet (q: detach or stop)")
    att.add_argument("session", metavar="SESSION", nargs="?", help="default: the only one")

    web = sub.add_parser("web", help="serve a running fleet's TUI to a browser (token in URL)")
    web.add_argument("session", metavar="SESSION", nargs="?", help="default: the only one")
    web.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    web.add_argument("--port", type=int, default=8088, help="port (default: 8088)")
    web.add_argument(
        "--allow-remote", action="store_true", help="allow an address other machines can reach"
    )

    down = sub.add_parser("down", help="stop a fleet cleanly")
    down.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")

    inbox = sub.add_parser("inbox", help="a running fleet's open inbox items")
    inbox.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")
    inbox.add_argument("--json", action="store_true", help="print a JSON list")

    for verb, what in (("approve", "approve an inbox item"), ("deny", "deny an inbox item")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("item", metavar="ITEM", help="inbox item id (i3)")
        _where(p)
        if verb == "deny":
            p.add_argument("--reason", metavar="R", help="why (the agent reads it)")

    rep = sub.add_parser("reply", help="answer a question or hand-off (or comment on a thread)")
    rep.add_argument("item", metavar="ITEM", help="inbox item id, or a thread id")
    rep.add_argument("text", metavar="TEXT")
    _where(rep)

    sp = sub.add_parser("spawn", help="start a thread in a running fleet")
    sp.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")
    sp.add_argument("--prompt", required=True, metavar="TEXT")
    sp.add_argument("--agent", metavar="A", help="agent template (default: the first)")
    sp.add_argument("--workspace", metavar="DIR", help="a folder of the project")
    sp.add_argument("--model", metavar="M")
    sp.add_argument("--json", action="store_true", help="print the reply as JSON")

    for verb in ("pause", "kill"):
        p = sub.add_parser(verb, help=f"{verb} a thread of a running fleet")
        p.add_argument("thread", metavar="THREAD")
        _where(p)


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", metavar="SESSION", help="which fleet (when several run)")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")


# --- finding a fleet ----------------------------------------------------------------------


def running() -> list[Listed]:
    return core_fleet.running()


def find(ref: str) -> Listed:
    """The running fleet whose session id is `ref` or starts with it."""
    try:
        return core_fleet.find(ref)
    except ServiceError as exc:
        raise FleetError(f"tower: {exc}") from None


async def _holder(key: str, what: str, session: str | None) -> Listed:
    """The fleet holding an inbox item or a thread: `--session`, else the one running
    fleet that has it."""
    if session is not None:
        return find(session)
    holders = []
    for fleet in running():
        try:
            async with await ServiceClient.connect(Path(fleet.socket)) as c:
                pool = c.state.inbox if what == "item" else c.state.threads
                if key in pool:
                    holders.append(fleet)
        except ServiceError:
            continue
    if not holders:
        raise FleetError(f"tower: no running fleet has {what} {key!r}; `tower ls` lists them")
    if len(holders) > 1:
        names = ", ".join(f.session for f in holders)
        raise FleetError(
            f"tower: {len(holders)} fleets have {what} {key!r} ({names}); say --session"
        )
    return holders[0]


async def _command(fleet: Listed, verb: str, **args: Any) -> Any:
    async with await ServiceClient.connect(Path(fleet.socket), watch=False) as c:
        return await c.command(verb, **args)


def _run(work: Any) -> Any:
    try:
        return asyncio.run(work)
    except ServiceError as exc:
        raise FleetError(f"tower: {exc}") from None


# --- the commands -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from tower.cli import _load, _run_session
    from tower.core.service import serve

    if (args.project is None) == (args.resume is None):
        raise FleetError("tower serve: give a project DIR or --resume SESSION")
    project = _load(args.project) if args.project is not None else None

    def ready(session: str) -> None:
        # `tower up` reads this line, then the service keeps no tie to its terminal.
        print(f"ready {session}", flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())

    from tower.core.session import PreflightError

    try:
        _run_session(serve(args.db, project, resume=args.resume, load=_load, ready=ready), args.db)
    except PreflightError as exc:  # unknown models, missing keys: one line each, exit 2
        raise FleetError(*exc.problems) from None
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from tower.cli import _load

    project = _load(args.project)
    try:
        up = core_fleet.up(project.root, project.name, args.db)
    except core_fleet.StartError as exc:
        raise FleetError(*exc.problems) from None
    if up.how == "reused":
        print(f"tower: {project.name} is already running (pid {up.pid})", file=sys.stderr)
    elif up.how == "resumed":
        print(f"tower: resumed {up.session} after its service died", file=sys.stderr)
    print(up.session)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    for fleet in listed():
        row: dict[str, Any] = {
            "session": fleet.session,
            "project": fleet.project,
            "pid": fleet.pid,
            "status": fleet.status,
            "db": fleet.db,
        }
        if fleet.status == "running":
            try:
                s = _run(_command(fleet, "state"))
                row.update(
                    threads=s["by_state"], inbox=s["inbox"], cost_usd=s["cost_usd"],
                    all_ended=s["all_ended"], views=s.get("views", {}),
                    not_started=s.get("not_started", 0), progress=s.get("progress"),
                )  # fmt: skip
            except FleetError:
                row["status"] = "not answering"
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no fleet is running (tower up DIR starts one)")
        return 0
    print(
        f"{'SESSION':<22} {'PROJECT':<16} {'PID':>7}  {'STATUS':<9} {'COST':>9}  INBOX  "
        f"{'PROGRESS':<34} THREADS"
    )
    for r in rows:
        threads = " ".join(f"{n} {s}" for s, n in (r.get("threads") or {}).items())
        if r.get("not_started"):
            threads += f" +{r['not_started']:,} not started"
        cost = f"${r['cost_usd']:.4f}" if "cost_usd" in r else "-"
        print(
            f"{r['session']:<22} {r['project'][:16]:<16} {r['pid']:>7}  {r['status']:<9} "
            f"{cost:>9}  {r.get('inbox', '-')!s:>5}  "
            f"{progress_text(r.get('progress')):<34} {threads}"
        )
    return 0


def progress_text(p: dict[str, Any] | None) -> str:
    """'5,199/10,000 ended 93.4/s ETA 51s': tasks ended of all, throughput, time to go."""
    if not p:
        return "-"
    text = f"{p['ended']:,}/{p['total']:,} ended"
    if p["left"] == 0:
        return text
    if p["per_s"]:
        text += f" {rate_text(p['per_s'])}"
    return text + f" ETA {age(p['eta_s']) if p['eta_s'] is not None else '—'}"


def _one(ref: str | None, command: str) -> Listed:
    """The fleet `ref` names, or the only one running."""
    if ref is not None:
        return find(ref)
    fleets = running()
    if len(fleets) != 1:
        names = ", ".join(f.session for f in fleets) or "none is running"
        raise FleetError(f"tower {command}: say which fleet ({names})")
    return fleets[0]


def cmd_attach(args: argparse.Namespace) -> int:
    from tower.cli import _load, _open_tui

    fleet = _one(args.session, "attach")
    return _open_tui(_load(fleet.project_dir), fleet.db, attach=Path(fleet.socket))


def cmd_web(args: argparse.Namespace) -> int:
    from tower.web import main_args, serve_web

    fleet = _one(args.session, "web")
    try:
        host, port = main_args(args)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    try:
        serve_web(fleet.session, host, port)
    except OSError as exc:
        raise FleetError(f"tower web: cannot listen on {host}:{port} ({exc.strerror})") from None
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tower.core.service import pid_alive

    fleet = find(args.session)
    _run(_command(fleet, "down"))
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while pid_alive(fleet.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the service flushes its log and exits
    if pid_alive(fleet.pid):
        raise FleetError(f"tower: {fleet.session} did not stop within {DOWN_TIMEOUT_S:.0f} s")
    print(f"stopped {fleet.session}")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    rows = _run(_command(find(args.session), "inbox"))
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        what = r.get("question") or (
            f"{r['tool']} {json.dumps(r.get('args') or {}, ensure_ascii=False)[:80]}"
            if r.get("tool")
            else r.get("reason") or ""
        )
        print(f"{r['item']:<6} {r['thread']:<20} {r['kind']:<11} {what}")
    return 0


def _steer(args: argparse.Namespace, verb: str, key: str, what: str, **extra: Any) -> int:
    async def work() -> Any:
        fleet = await _holder(key, what, args.session)
        return await _command(fleet, verb, **extra)

    result = _run(work())
    print(json.dumps(result) if args.json else f"{verb}: {key}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    return _steer(args, "approve", args.item, "item", item=args.item)


def cmd_deny(args: argparse.Namespace) -> int:
    return _steer(args, "deny", args.item, "item", item=args.item, reason=args.reason)


def cmd_reply(args: argparse.Namespace) -> int:
    what = "item" if args.item[:1] == "i" and args.item[1:].isdigit() else "thread"
    return _steer(args, "reply", args.item, what, target=args.item, text=args.text)


def cmd_pause(args: argparse.Namespace) -> int:
    return _steer(args, "pause", args.thread, "thread", thread=args.thread)


def cmd_kill(args: argparse.Namespace) -> int:
    return _steer(args, "kill", args.thread, "thread", thread=args.thread)


def resume_thread(ref: str, session: str | None, as_json: bool) -> int | None:
    """`tower resume THREAD`: lifts a running fleet's pause; None when no running fleet has
    a thread `ref` (then `tower resume SESSION` continues a recorded session, as before)."""
    if session is None:
        try:
            fleet = asyncio.run(_holder(ref, "thread", None))
        except (FleetError, ServiceError):
            return None
    else:
        fleet = find(session)
    result = _run(_command(fleet, "resume", thread=ref))
    print(json.dumps(result) if as_json else f"resume: {ref}")
    return 0


def cmd_spawn(args: argparse.Namespace) -> int:
    fleet = find(args.session)
    result = _run(
        _command(
            fleet,
            "spawn",
            prompt=args.prompt,
            agent=args.agent,
            model=args.model,
            workspace=args.workspace,
        )
    )
    print(json.dumps(result) if args.json else result["thread"])
    return 0


COMMANDS = {
    "up": cmd_up,
    "attach": cmd_attach,
    "web": cmd_web,
    "serve": cmd_serve,
    "ls": cmd_ls,
    "down": cmd_down,
    "inbox": cmd_inbox,
    "approve": cmd_approve,
    "deny": cmd_deny,
    "reply": cmd_reply,
    "spawn": cmd_spawn,
    "pause": cmd_pause,
    "kill": cmd_kill,
}
