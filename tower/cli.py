"""tower's command line: run, sessions, check.

Expected failures (bad project, unknown model, missing key, unusable database) print one line
per problem to stderr and exit 2, never a traceback. litellm is imported only by commands
that call models, never at import time here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tower import __version__
from tower.core import payloads as pl
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.payloads import payload_of
from tower.core.project import PROJECT_FILE, Project, ProjectError, load_project
from tower.core.store import Store
from tower.core.supervisor import ApproveMode

# Exit codes of run --headless, resume --headless and fork (README: "Exit codes").
EXIT_FAILED = 1  # a thread failed, was killed or did not finish
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """An expected failure: one or more one-line messages, exit code 2."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="session database (default: user data dir)")


def _session_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION", help="session id (or a unique prefix)")


def _decision_args(p: argparse.ArgumentParser, approve_help: str) -> None:
    """--approve and --json, shared by the commands that run threads (run, resume, fork)."""
    p.add_argument("--approve", choices=("all", "none"), default=None, help=approve_help)
    p.add_argument("--json", action="store_true", help="print one JSON summary object")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tower",
        description="A keyboard-driven control tower for many LLM agent loops.",
    )
    p.add_argument("--version", action="version", version=f"tower {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a project in the TUI (or --headless)")
    run.add_argument("project", metavar="DIR", help="project folder with a tower.toml")
    run.add_argument("--headless", action="store_true", help="run without the TUI")
    _db_arg(run)
    _decision_args(
        run,
        "headless decisions: approve/answer everything, or deny/refuse everything (default: none)",
    )

    ses = sub.add_parser("sessions", help="list recorded sessions")
    _db_arg(ses)
    ses.add_argument("--json", action="store_true", help="print a JSON list")

    res = sub.add_parser(
        "resume", help="continue a crashed or interrupted session (or a paused thread of a fleet)"
    )
    _session_arg(res)
    res.add_argument("--session", dest="fleet", metavar="SESSION", help="a thread's fleet")
    res.add_argument("--headless", action="store_true", help="run without the TUI")
    _db_arg(res)
    _decision_args(res, "headless decisions, as for run (default: none)")

    frk = sub.add_parser("fork", help="a new session from any event of another, run live")
    _session_arg(frk)
    frk.add_argument("--at", type=int, metavar="SEQ", required=True, help="fork after event SEQ")
    frk.add_argument("--model", metavar="M", help="continue the unfinished threads on model M")
    _db_arg(frk)
    _decision_args(frk, "decisions, as for run --headless (default: none)")

    rep = sub.add_parser("replay", help="a recorded session's state at any event")
    _session_arg(rep)
    _db_arg(rep)
    rep.add_argument("--print-state", action="store_true", help="print the reduced state")
    rep.add_argument("--json", action="store_true", help="as one JSON object")
    rep.add_argument("--at", type=int, metavar="SEQ", help="stop after event SEQ")

    exp = sub.add_parser(
        "export",
        help="export a session: events (jsonl), threads (csv) or spans (otlp, to the"
        " endpoint OTEL_EXPORTER_OTLP_ENDPOINT names)",
    )
    _session_arg(exp)
    _db_arg(exp)
    exp.add_argument("--format", choices=("jsonl", "csv", "otlp"), required=True)
    exp.add_argument("--out", metavar="PATH", help="file to write (default: stdout)")

    chk = sub.add_parser("check", help="validate a project")
    chk.add_argument("project", metavar="DIR", help="project folder with a tower.toml")

    xp = sub.add_parser(
        "experiment", help="run the same tasks under two or more loop designs and compare"
    )
    xp.add_argument("project", metavar="DIR", help="project folder with a tower.toml")
    xp.add_argument(
        "--variants",
        nargs="+",
        metavar="FILE",
        required=True,
        help="TOML files laid over tower.toml, one per variant (e.g. experiments/*.toml)",
    )
    xp.add_argument("--tasks", type=int, metavar="N", help="only the project's first N tasks")
    xp.add_argument("--json", action="store_true", help="print the scores as JSON")
    _db_arg(xp)

    from tower.fleet_cli import add_commands

    add_commands(sub)
    return p


def _load(path: str | Path) -> Project:
    try:
        return load_project(path)
    except ProjectError as exc:
        raise UsageError(*exc.problems) from None


def _preflight(project: Project) -> None:
    """The session's preflight (models, keys, MCP commands): each problem one line, exit 2."""
    from tower.core.session import preflight

    problems = preflight(project)
    if problems:
        raise UsageError(*problems)


def _fmt_usd(x: float | None) -> str:
    return "no limit" if x is None else f"${x:.4f}"


class _Printer:
    """Headless text output: one line per thread state change, per decision a rule took, per
    escalation, failed check and budget stop."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def _line(self, ev: Event, text: str) -> None:
        print(f"{self._stamp(ev)}  {ev.thread or '':<24} {text}", file=self.out)

    def __call__(self, ev: Event) -> None:
        line = _PRINTED.get(pl.TYPES[ev.kind])
        if line is not None:
            line(self, ev, payload_of(ev))

    def _stamp(self, ev: Event) -> str:
        return time.strftime("%H:%M:%S", time.localtime(ev.ts))

    def _escalated(self, ev: Event, p: pl.Escalated) -> None:
        trigger = f" ({p.trigger})" if p.trigger else ""
        self._line(ev, f"escalated {p.from_model} → {p.to_model}{trigger}")

    def _checked(self, ev: Event, p: pl.Checked) -> None:
        if p.passed:
            return
        on = f" on {p.model}" if p.model else ""
        self._line(ev, f"check failed{on}: {p.detail}")

    def _inbox_opened(self, ev: Event, p: pl.InboxOpened) -> None:
        if p.kind != InboxKind.BUDGET:
            return
        scope, reason = p.extra.get("scope", ""), p.reason
        where = "" if not scope or reason.startswith(scope) else f" ({scope})"
        self._line(ev, f"budget stop{where}: {reason}")

    def _thread_state(self, ev: Event, p: pl.ThreadStateChanged) -> None:
        line = f"{self._stamp(ev)}  {ev.thread:<24} {p.state:<8}"
        if p.reason:
            line += f" {p.reason}"
        if p.answer and p.state == ThreadState.DONE:
            short = " ".join(p.answer.split())
            line += f" — {short[:100]}{'…' if len(short) > 100 else ''}"
        print(line.rstrip(), file=self.out, flush=False)

    def _inbox_closed(self, ev: Event, p: pl.InboxClosed) -> None:
        if p.by.startswith("rule"):
            print(
                f"{self._stamp(ev)}  {ev.thread:<24} inbox {p.item} {p.resolution} ({p.by})",
                file=self.out,
            )

    def _tool_called(self, ev: Event, p: pl.ToolCalled) -> None:
        if p.policy == "deny":
            rule = p.rule or "policy"
            print(f"{self._stamp(ev)}  {ev.thread:<24} refused {p.tool} by {rule}", file=self.out)

    def _mcp_server(self, ev: Event, p: pl.McpServer) -> None:
        tools = f", {len(p.tools)} tool(s)" if p.tools is not None else ""
        detail = f" {p.detail}" if p.detail else ""
        print(
            f"{self._stamp(ev)}  mcp {p.server:<20} {p.status}{tools}{detail}",
            file=self.out,
        )


# What the printer shows, by payload type; kinds not here print nothing.
_PRINTED: dict[type[pl.Payload], Callable[[_Printer, Event, Any], None]] = {
    pl.Escalated: _Printer._escalated,
    pl.Checked: _Printer._checked,
    pl.InboxOpened: _Printer._inbox_opened,
    pl.ThreadStateChanged: _Printer._thread_state,
    pl.InboxClosed: _Printer._inbox_closed,
    pl.ToolCalled: _Printer._tool_called,
    pl.McpServer: _Printer._mcp_server,
}


T = TypeVar("T")


def _run_session(work: Coroutine[Any, Any, T], db: str | None) -> T:
    """Runs a command's work; the failures a session expects become one-line usage errors.

    Every command that opens the log goes through here, so the list of expected failures
    (session.SESSION_ERRORS, and an experiment's) is written once.
    """
    import sqlite3

    from tower.core.experiment import ExperimentError
    from tower.core.session import SESSION_ERRORS

    expected: tuple[type[Exception], ...] = (*SESSION_ERRORS, ExperimentError)
    try:
        return asyncio.run(work)
    except expected as exc:
        raise UsageError(f"tower: {exc}") from None
    except sqlite3.Error as exc:  # a damage no check foresaw: still one line, no traceback
        raise UsageError(f"tower: cannot read database {db or 'default'}: {exc}") from None


def _with_store(db: str | None, work: Callable[[Store], Awaitable[T]]) -> T:
    """Opens the log, runs `work` on it, closes it; expected failures become usage errors."""

    async def run() -> T:
        store = await Store.open(db)
        try:
            return await work(store)
        finally:
            await store.close()

    return _run_session(run(), db)


def _open_tui(
    project: Project, db: str | None, resume: str | None = None, attach: Path | None = None
) -> int:
    """The control tower on a project: terminal check, the user's keys and theme, run.
    `attach`: a running fleet's socket (the screen is a view of it); otherwise the session
    runs as a fleet (`tower up`, from the TUI once its first frame is up) and the screen
    attaches to it, so quitting can leave it running."""
    web = "web_driver" in os.environ.get("TEXTUAL_DRIVER", "")  # a browser tab (tower web)
    if not web and (not sys.stdout.isatty() or not sys.stdin.isatty()):
        raise UsageError("tower: the TUI needs a terminal; use --headless (see tower run --help)")
    from tower.ui.app import VERBS, TowerApp
    from tower.ui.keymap import ConfigError, config_path, load_config, validate_keys

    try:
        config = load_config()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    problems = validate_keys(config, {bid for bid, *_ in VERBS}, {b: k for b, k, *_ in VERBS})
    if problems:
        raise UsageError(*problems)
    app = TowerApp(
        project,
        db,
        keymap=config.keymap(),
        bell=config.bell,
        theme=config.theme,
        notify=config.notify,
        resume=resume,
        config_file=config_path(),
        attach=attach,
        up=attach is None,
    )
    app.run()
    from tower.ui.screens.sessions import Handoff

    if isinstance(app.return_value, Handoff):  # `L`, then r or f: another session next
        return _hand_over(app.return_value, db)
    return app.return_code or 0


def _hand_over(handoff: Any, db: str | None) -> int:
    """The TUI left its session for another: reopen on it (resume), or on a fork of it."""
    session = handoff.session
    if handoff.fork_at is not None:
        session = _with_store(db, lambda store: _fork_copy(store, handoff.session, handoff.fork_at))
    return _resume_tui(session, db)


async def _fork_copy(store: Store, ref: str, at: int) -> str:
    """The fork's id: events 1..`at` of another session, copied (see session.fork_copy)."""
    from tower.core.session import fork_copy

    return (await fork_copy(store, ref, at))[1]


async def _probe(store: Store) -> None:
    """Nothing: opening the store is the check (an unusable --db fails before the TUI)."""


def run_tui(project_dir: str | Path, db: str | None) -> int:
    """Opens the control tower on a project; model checks happen inside, off the first frame."""
    project = _load(str(project_dir))
    _with_store(db, _probe)
    return _open_tui(project, db)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.headless:
        if args.json or args.approve:
            raise UsageError("tower run: --json and --approve only apply with --headless")
        return run_tui(args.project, args.db)
    project = _load(args.project)
    _preflight(project)
    from tower.core.session import run_headless

    approve: ApproveMode = "all" if args.approve == "all" else "none"  # argparse: all|none|None
    printer = None if args.json else _Printer(sys.stdout)
    if printer is not None:
        print(
            f"tower: running {project.name} ({len(project.tasks)} task(s)), approvals: {approve}",
            flush=True,
        )
    result = _run_session(run_headless(project, args.db, approve, printer), args.db)
    return _report(result, f" project {project.name}", args.json, f"\nlog: {result.db}")


def _ts(x: float | None) -> str:
    return "-" if x is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x))


def cmd_sessions(args: argparse.Namespace) -> int:
    if args.db is not None and not Path(args.db).exists():
        raise UsageError(f"tower: no database at {args.db}")

    async def listed(store: Store) -> list[Any]:
        await store.check_log()  # a damaged session is named, never listed as if whole
        return await store.list_sessions()

    found = _with_store(args.db, listed)
    rows = [r.to_dict() for r in found]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no sessions yet")
        return 0
    # STATUS: running, clean, unfinished (ended with threads left: `tower resume` continues
    # them) or crashed; THREADS: done/failed+killed/unfinished.
    # YOU: minutes the person spent deciding; BLOCKED: thread-minutes waiting for them.
    header = (
        f"{'ID':<22} {'PROJECT':<18} {'STARTED':<19} {'ENDED':<19} {'STATUS':<10} "
        f"{'THREADS':>9} {'COST':>10} {'YOU':>7} {'BLOCKED':>8}"
    )
    print(header)
    for r, row in zip(rows, found, strict=True):
        threads = f"{row.done}/{row.failed + row.killed}/{row.unfinished}"
        print(
            f"{r['id']:<22} {r['project'][:18]:<18} {_ts(r['started']):<19} {_ts(r['ended']):<19} "
            f"{r['status']:<10} {threads:>9} {'$' + format(r['cost_usd'], '.4f'):>10} "
            f"{row.human_minutes:>6.1f}m {row.blocked_minutes:>7.1f}m"
        )
    return 0


def _existing_db(db: str | None, session: str | None = None) -> None:
    """The database must exist; with `session`, that session's log must read back whole
    (a damaged one is named by session and event before anything runs or is written)."""
    if db is not None and not Path(db).is_file():
        raise UsageError(f"tower: no database at {db}")
    if session is not None:
        from tower.core.replay import resolve_session

        async def check(store: Store) -> None:
            await store.check_log(await resolve_session(store, session))

        _with_store(db, check)


def cmd_replay(args: argparse.Namespace) -> int:
    from tower.core.replay import print_state, resolve_session, state_at

    if not args.print_state:
        if args.json or args.at is not None:
            raise UsageError("tower replay: --json and --at apply with --print-state")
        _existing_db(args.db)
        if not sys.stdout.isatty() or not sys.stdin.isatty():
            raise UsageError("tower replay: the replay screen needs a terminal; use --print-state")
        from tower.ui.replay_app import ReplayApp

        app = ReplayApp(args.db, args.session)
        app.run()
        return app.return_code or 0
    if args.at is not None and args.at < 0:
        raise UsageError("tower replay: --at must be 0 or more")
    _existing_db(args.db)

    async def reduce(store: Store) -> dict[str, Any]:
        session = await resolve_session(store, args.session)
        return print_state(await state_at(store, session, args.at), args.at)

    out = _with_store(args.db, reduce)
    if args.json:
        print(json.dumps(out))
    else:
        t = out["threads"]
        print(
            f"session {out['session']} after event {out['at']}: "
            f"{t['done']} done, {t['failed']} failed, {t['killed']} killed · "
            f"cost {_fmt_usd(out['cost_usd'])} of {_fmt_usd(out['budget_usd'])} · "
            f"tokens {out['tokens']:,} · inbox {len(out['state']['inbox'])}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tower.core.replay import export_csv, export_jsonl, resolve_session

    _existing_db(args.db)
    if args.format == "otlp":
        return _export_otlp(args)
    try:
        out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"tower export: cannot write {args.out}: {exc.strerror}") from None

    async def write(store: Store) -> int:
        session = await resolve_session(store, args.session)
        writer = export_jsonl if args.format == "jsonl" else export_csv
        return await writer(store, session, out)

    try:
        n = _with_store(args.db, write)
    finally:
        if args.out:
            out.close()
    if args.out:
        what = "events" if args.format == "jsonl" else "threads"
        print(f"wrote {n} {what} to {args.out}", file=sys.stderr)
    return 0


def _export_otlp(args: argparse.Namespace) -> int:
    """A recorded session's spans, sent to the OTLP/HTTP endpoint of the standard variables."""
    from tower.core import otel
    from tower.core.replay import resolve_session

    if not otel.endpoint_configured():
        raise UsageError(
            "tower export: --format otlp sends spans to OTEL_EXPORTER_OTLP_ENDPOINT"
            " (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), which is not set"
        )
    if args.out:
        raise UsageError("tower export: --format otlp sends spans; it writes no --out file")

    async def build(store: Store) -> tuple[str, list[Any]]:
        session = await resolve_session(store, args.session)
        await store.check_log(session)
        events = [ev async for ev in store.events(session)]
        return session, otel.collect_spans(events, session)

    session, spans = _with_store(args.db, build)
    try:
        where = otel.send_spans(spans)
    except otel.ExportFailed as exc:
        print(f"tower export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {len(spans)} spans of session {session} to {where}", file=sys.stderr)
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    from tower.core.session import fork_headless

    _existing_db(args.db)
    if args.model is not None:
        from tower.core.llm import check_model

        problem = check_model(args.model)
        if problem:
            raise UsageError(f"tower fork: --model: {problem}")
    printer = None if args.json else _Printer(sys.stdout)
    result = _run_session(
        fork_headless(
            args.db, args.session, args.at, args.approve or "none", args.model, printer, _load
        ),
        args.db,
    )
    return _report(result, "forked", args.json)


def _report(result: Any, what: str, as_json: bool, tail: str = "") -> int:
    """A run's summary: one JSON object, or three lines of text; the exit code says how it
    ended (see `exit_code`)."""
    s = result.summary
    if as_json:
        print(json.dumps(s))
    else:
        t = s["threads"]
        print(
            f"\nsession {s['session']} {what}"
            + ("  (interrupted)" if result.interrupted else "")
            + f"\nthreads: {t['done']} done, {t['failed']} failed, {t['killed']} killed"
            f"   cost {_fmt_usd(s['cost_usd'])} of {_fmt_usd(s['budget_usd'])}"
            f"   tokens {s['tokens']:,}   events {s['events']:,}" + tail
        )
        from tower.core.subagents import tree_lines

        trees = tree_lines(result.state)
        if trees:
            print("sub-agents:\n  " + "\n  ".join(trees))
    return exit_code(result)


def exit_code(result: Any) -> int:
    """130 if interrupted, 0 if every thread is done, else 1 (one failed, killed or left)."""
    if result.interrupted:
        return EXIT_INTERRUPTED
    threads = result.state.threads.values()
    return 0 if all(t.state == ThreadState.DONE for t in threads) else EXIT_FAILED


def _running_fleet(ref: str) -> Any:
    """The running fleet of session `ref` (or a unique prefix of it), if one runs."""
    from tower.core.fleet import find
    from tower.core.wire import ServiceError

    try:
        return find(ref)
    except ServiceError:  # none, or the prefix names several: not one fleet's session
        return None


def _resume_tui(ref: str, db: str | None) -> int:
    from tower.core.replay import resolve_session, state_at
    from tower.core.session import ResumeError

    live = _running_fleet(ref)
    if live is not None:  # it runs as a fleet: this screen is one more view of it
        return _open_tui(_load(live.project_dir), live.db, attach=Path(live.socket))

    async def find(store: Store) -> tuple[str, str]:
        session = await resolve_session(store, ref)
        row = {r.id: r for r in await store.list_sessions()}[session]
        if row.status == "running":
            raise ResumeError(f"session {session} is still running in another process")
        # A crashed session resumes even with every thread ended: tasks a crash kept from
        # being spawned run now, and its log gets the end the crash denied it.
        if row.status != "crashed" and (await state_at(store, session)).all_ended:
            raise ResumeError(f"session {session} has no unfinished thread to resume")
        return session, row.project_dir

    session, project_dir = _with_store(db, find)
    return _open_tui(_load(project_dir), db, resume=session)


def cmd_resume(args: argparse.Namespace) -> int:
    from tower.core.session import resume_headless
    from tower.fleet_cli import resume_thread

    if not args.headless and not args.approve:
        # `tower resume THREAD`: a paused thread of a running fleet, when one has it.
        done = resume_thread(args.session, args.fleet, args.json)
        if done is not None:
            return done
        if _running_fleet(args.session) is not None:
            return _resume_tui(args.session, args.db)
    _existing_db(args.db, args.session)
    if not args.headless:
        if args.json or args.approve:
            raise UsageError("tower resume: --json and --approve only apply with --headless")
        return _resume_tui(args.session, args.db)
    approve: ApproveMode = "all" if args.approve == "all" else "none"  # argparse: all|none|None
    printer = None if args.json else _Printer(sys.stdout)
    result = _run_session(resume_headless(args.db, args.session, approve, printer, _load), args.db)
    return _report(result, "resumed", args.json)


def cmd_check(args: argparse.Namespace) -> int:
    project = _load(args.project)
    _preflight(project)
    threads = sum(t.repeat for t in project.tasks)
    models = ", ".join(project.all_models())
    print(
        f"{project.root / PROJECT_FILE}: ok — project {project.name!r}, "
        f"{len(project.agents)} agent(s), {len(project.tasks)} task(s) ({threads} thread(s)), "
        f"models {models}"
    )
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from tower.core.experiment import ExperimentError, load_variant, run_experiment, table, winner
    from tower.core.session import preflight

    project = _load(args.project)
    if args.tasks is not None and args.tasks < 1:
        raise UsageError("tower experiment: --tasks must be 1 or more")
    variants = [Path(v) for v in args.variants]
    if len(variants) < 2:
        raise UsageError("tower experiment: give at least two --variants to compare")
    problems = []
    for v in variants:
        if not v.is_file():
            problems.append(f"{v}: no such variant file")
            continue
        try:
            problems += preflight(load_variant(project.root, v, args.tasks))
        except ExperimentError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError(*problems)

    def progress(name: str, ev: Event) -> None:
        if ev.kind is EventKind.SESSION_STARTED:
            print(f"tower: variant {name}: session {ev.payload['session']}", flush=True)

    scores = _run_session(
        run_experiment(
            project.root, variants, args.db, args.tasks, None if args.json else progress
        ),
        args.db,
    )
    best = winner(scores)
    if args.json:
        print(json.dumps({"variants": [s.to_dict() for s in scores], "winner": best}))
        return 0
    rows = table(scores)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for s in scores:
        if s.failures:
            why = ", ".join(f"{n} {k}" for k, n in sorted(s.failures.items()))
            print(f"{s.name}: not successful: {why}")
    if best is not None:
        print(f"\nbest: {best} (lowest cost per success at the highest success rate)")
    return 0


def _setup_logging() -> None:
    """Diagnostics go to a log file beside the database, never to the terminal."""
    import logging

    import platformdirs

    folder = Path(platformdirs.user_log_dir("tower", appauthor=False))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(folder / "tower.log", encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging()
    commands = {
        "run": cmd_run,
        "sessions": cmd_sessions,
        "check": cmd_check,
        "replay": cmd_replay,
        "export": cmd_export,
        "resume": cmd_resume,
        "fork": cmd_fork,
        "experiment": cmd_experiment,
    }
    from tower.fleet_cli import COMMANDS as FLEET_COMMANDS

    commands.update(FLEET_COMMANDS)
    if args.command is None:
        from tower.resources import demo_project_dir

        try:
            return run_tui(demo_project_dir(), None)
        except UsageError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            return EXIT_USAGE
    try:
        return commands[args.command](args)
    except UsageError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tower export … | head`: the reader left; that is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
