"""A/B experiments (tower/core/experiment.py and `tower experiment`): variants laid over
tower.toml, each run as its own recorded session and scored; the scores are checked against
figures computed here from the events stored in the database."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import db_events, one_line_error, tower, write_project
from tower.core.events import Event, EventKind, ThreadState
from tower.core.experiment import (
    ExperimentError,
    VariantScore,
    load_variant,
    run_experiment,
    table,
    winner,
)

BASE = """
[project]
name = "xp"
seed = 11
retry_backoff_s = 0

[budget]
usd = 5.0
thread_usd = 1.0

[limits]
max_concurrent = 2

[models."sim/small"]
latency_s = 0
tokens_per_s = 0
wrong_rate = 1

[models."sim/large"]
latency_s = 0
tokens_per_s = 0

[[agents]]
name = "worker"
description = "reads one file and answers"
cascade = ["sim/small"]
tools = ["read_file", "list_dir", "finish"]
max_steps = 12
max_tokens = 300

[[agents]]
name = "other"
cascade = ["sim/instant"]

[[tasks]]
id = "one"
agent = "worker"
prompt = "What does a.txt say?"
workspace = "data"

[tasks.check]
answer_contains = ["alpha"]

[[tasks.script]]
tool = "list_dir"
args = { path = "." }

[[tasks.script]]
tool = "read_file"
args = { path = "a.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "a.txt says alpha" }
wrong_args = { answer = "a.txt says beta" }

[[tasks]]
id = "two"
agent = "worker"
prompt = "What does b.txt say?"
workspace = "data"

[tasks.check]
answer_matches = "\\\\bbravo\\\\b"

[[tasks.script]]
tool = "list_dir"
args = { path = "." }

[[tasks.script]]
tool = "read_file"
args = { path = "b.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "b.txt says bravo" }
wrong_args = { answer = "b.txt says charlie" }
"""

DATA = {"data/a.txt": "alpha\n", "data/b.txt": "bravo\n"}

CASCADE = '[[agents]]\nname = "worker"\ncascade = ["sim/small", "sim/large"]\n'
STRONG = '[[agents]]\nname = "worker"\ncascade = ["sim/large"]\n'
SMALL_ONLY = '[[agents]]\nname = "worker"\ncascade = ["sim/small"]\n'


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", BASE, DATA)


def variant(dirpath: Path, name: str, text: str) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- load_variant --------------------------------------------------------------------------


def test_agents_merge_by_name_replacing_only_the_keys_given(proj: Path, tmp_path: Path) -> None:
    before = (proj / "tower.toml").read_bytes()
    p = load_variant(proj, variant(tmp_path / "v", "cascade", CASCADE))
    worker = p.agent("worker")
    assert worker.cascade == ["sim/small", "sim/large"]
    assert worker.description == "reads one file and answers"
    assert worker.tools == ["read_file", "list_dir", "finish"]
    assert (worker.max_steps, worker.max_tokens) == (12, 300)
    assert p.agent("other").cascade == ["sim/instant"]
    assert [a.name for a in p.agents] == ["worker", "other"]
    assert [t.id for t in p.tasks] == ["one", "two"]
    assert (proj / "tower.toml").read_bytes() == before  # the project file is untouched


def test_a_variant_agent_with_a_new_name_is_added(proj: Path, tmp_path: Path) -> None:
    v = variant(tmp_path / "v", "extra", '[[agents]]\nname = "third"\ncascade = ["sim/large"]\n')
    p = load_variant(proj, v)
    assert [a.name for a in p.agents] == ["worker", "other", "third"]
    assert p.agent("worker").cascade == ["sim/small"]


def test_tables_merge_key_by_key(proj: Path, tmp_path: Path) -> None:
    text = (
        "[project]\nseed = 99\n\n[budget]\nthread_usd = 2.0\n\n"
        '[models."sim/small"]\nwrong_rate = 0.5\n\n[models."sim/large"]\nmax_concurrent = 1\n'
    )
    p = load_variant(proj, variant(tmp_path / "v", "tables", text))
    assert (p.project.name, p.project.seed, p.project.retry_backoff_s) == ("xp", 99, 0)
    assert (p.budget.usd, p.budget.thread_usd) == (5.0, 2.0)
    small = p.model_settings("sim/small")
    assert (small.latency_s, small.tokens_per_s, small.wrong_rate) == (0, 0, 0.5)
    large = p.model_settings("sim/large")
    assert (large.latency_s, large.max_concurrent) == (0, 1)
    assert p.limits.max_concurrent == 2
    assert p.agent("worker").cascade == ["sim/small"]


@pytest.mark.parametrize(("n", "ids"), [(None, ["one", "two"]), (1, ["one"]), (5, ["one", "two"])])
def test_tasks_n_keeps_the_first_n_tasks(
    proj: Path, tmp_path: Path, n: int | None, ids: list[str]
) -> None:
    p = load_variant(proj, variant(tmp_path / "v", "cascade", CASCADE), tasks=n)
    assert [t.id for t in p.tasks] == ids


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[tasks]]\nid = "x"\nagent = "worker"\nprompt = "p"\n', "not the tasks"),
        ("[budget\nusd = 1\n", "not valid TOML"),
        ("[budget]\nusdd = 1.0\n", "usdd"),
        ('[[agents]]\nname = "worker"\ncasade = ["sim/large"]\n', "casade"),
        ('[[agents]]\ncascade = ["sim/large"]\n', "needs a name"),
        ('[[agents]]\nname = "worker"\ncascade = ["sim/huge"]\n', "sim/huge"),
    ],
    ids=["tasks", "toml", "unknown-key", "unknown-agent-key", "nameless-agent", "unknown-model"],
)
def test_bad_variants_raise_one_line_naming_the_problem(
    proj: Path, tmp_path: Path, text: str, says: str
) -> None:
    path = variant(tmp_path / "v", "bad", text)
    with pytest.raises(ExperimentError) as info:
        load_variant(proj, path)
    message = str(info.value)
    assert "\n" not in message
    assert says in message
    if says != "needs a name":
        assert str(path) in message


def test_a_missing_variant_file_is_named(proj: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ExperimentError) as info:
        load_variant(proj, missing)
    assert str(missing) in str(info.value) and "cannot read" in str(info.value)


# --- scores from the stored events ---------------------------------------------------------


def db_sessions(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, status FROM sessions").fetchall())


@dataclass
class Figures:
    """A session's figures, counted from its log without tower's reducer."""

    threads: int
    successes: int
    checked: int
    cost_usd: float
    tokens: int
    escalations: int
    items: int
    escalated_to: dict[str, list[str]]
    models: set[str]

    @property
    def cost_per_success(self) -> float | None:
        return self.cost_usd / self.successes if self.successes else None


def figures(events: list[Event]) -> Figures:
    threads = [e.thread for e in events if e.kind is EventKind.THREAD_SPAWNED]
    final: dict[str, str] = {}
    last_check: dict[str, bool] = {}
    escalated_to: dict[str, list[str]] = {t: [] for t in threads if t}
    for e in events:
        if e.kind is EventKind.THREAD_STATE:
            final[e.thread or ""] = e.payload["state"]
        elif e.kind is EventKind.CHECKED:
            last_check[e.thread or ""] = e.payload["passed"]
        elif e.kind is EventKind.ESCALATED:
            escalated_to[e.thread or ""].append(e.payload["to_model"])
    done = [t for t in threads if t and final.get(t) == ThreadState.DONE]
    finished = [e for e in events if e.kind is EventKind.LLM_FINISHED]
    folds = [e for e in events if e.kind is EventKind.COMPACTED]  # a summary's call is paid
    return Figures(
        threads=len(threads),
        successes=sum(1 for t in done if last_check.get(t) is not False),
        checked=len(last_check),
        cost_usd=sum(e.payload["cost_usd"] for e in [*finished, *folds]),
        tokens=sum(e.payload["usage"]["total_tokens"] for e in [*finished, *folds]),
        escalations=sum(1 for e in events if e.kind is EventKind.ESCALATED),
        items=sum(1 for e in events if e.kind is EventKind.INBOX_OPENED),
        escalated_to=escalated_to,
        models={e.payload["model"] for e in events if e.kind is EventKind.LLM_STARTED},
    )


def assert_consistent(score: VariantScore, fig: Figures) -> None:
    assert score.tasks == fig.threads
    assert score.successes == fig.successes
    assert score.failed == fig.threads - fig.successes
    assert score.checked == fig.checked
    assert score.cost_usd == pytest.approx(fig.cost_usd, rel=1e-9)
    assert score.tokens == fig.tokens
    assert score.escalations_per_task == pytest.approx(fig.escalations / fig.threads, abs=1e-3)
    assert score.human_per_task == pytest.approx(fig.items / fig.threads, abs=1e-3)
    if fig.cost_per_success is None:
        assert score.cost_per_success is None
    else:
        assert score.cost_per_success == pytest.approx(fig.cost_per_success, rel=1e-9)
    assert score.p50_s is not None and score.p95_s is not None and score.p50_s <= score.p95_s


async def test_run_experiment_records_a_session_per_variant_and_scores_them(
    proj: Path, tmp_path: Path
) -> None:
    a = variant(tmp_path / "v", "cascade", CASCADE)
    b = variant(tmp_path / "v", "strong", STRONG)
    db = tmp_path / "xp.db"
    scores = await run_experiment(proj, [a, b], db)
    assert [s.name for s in scores] == ["cascade", "strong"]
    assert [s.file for s in scores] == [str(a), str(b)]
    sessions = db_sessions(db)
    assert sorted(sessions) == sorted(s.session for s in scores)
    assert set(sessions.values()) == {"clean"}
    figs = {s.name: figures(db_events(db, s.session)) for s in scores}
    for s in scores:
        assert_consistent(s, figs[s.name])
    fa, fb = figs["cascade"], figs["strong"]
    # sim/small is always wrong here: each cascade thread fails its check once and the
    # stronger model fixes it; the strong variant never calls sim/small at all.
    assert fa.successes == fb.successes == 2
    assert fa.escalated_to == {"one": ["sim/large"], "two": ["sim/large"]}
    assert fb.escalated_to == {"one": [], "two": []}
    assert fb.models == {"sim/large"} and fa.models == {"sim/small", "sim/large"}
    assert fa.items == fb.items == 0
    cheaper = min(figs, key=lambda n: figs[n].cost_per_success or float("inf"))
    assert winner(scores) == cheaper == "cascade"
    rows = table(scores)
    assert len(rows) == 3 and [r[0] for r in rows[1:]] == ["cascade", "strong"]
    assert [r[-1] for r in rows[1:]] == [s.session for s in scores]


async def test_a_variant_that_fails_its_checks_scores_lower(proj: Path, tmp_path: Path) -> None:
    c = variant(tmp_path / "v", "small", SMALL_ONLY)
    b = variant(tmp_path / "v", "strong", STRONG)
    db = tmp_path / "xp.db"
    scores = await run_experiment(proj, [c, b], db, tasks=1)
    small, strong = scores
    fig = figures(db_events(db, small.session))
    assert_consistent(small, fig)
    assert_consistent(strong, figures(db_events(db, strong.session)))
    assert fig.threads == 1 and fig.successes == 0
    assert fig.items == 1  # the exhausted cascade went to the (absent) human, once
    assert small.success_rate < strong.success_rate == 1.0
    assert small.failures == {"check failed": 1}
    assert small.cost_per_success is None
    assert winner(scores) == "strong"


async def test_two_variants_with_the_same_name_are_refused_before_running(
    proj: Path, tmp_path: Path
) -> None:
    a = variant(tmp_path / "x", "same", CASCADE)
    b = variant(tmp_path / "y", "same", STRONG)
    db = tmp_path / "xp.db"
    with pytest.raises(ExperimentError, match="share a file name"):
        await run_experiment(proj, [a, b], db)
    assert not db.exists() or db_sessions(db) == {}


def _score(name: str, successes: int, tasks: int, cost: float) -> VariantScore:
    return VariantScore(
        name=name,
        file=f"{name}.toml",
        session=name,
        tasks=tasks,
        checked=tasks,
        successes=successes,
        failed=tasks - successes,
        cost_usd=cost,
        tokens=0,
        p50_s=None,
        p95_s=None,
        escalations_per_task=0.0,
        human_per_task=0.0,
    )


def test_winner_is_the_cheapest_success_at_the_best_success_rate() -> None:
    scores = [
        _score("dear", 4, 4, 0.40),  # 0.10 per success
        _score("cheap", 4, 4, 0.20),  # 0.05 per success
        _score("sloppy", 1, 4, 0.01),  # cheapest per success, but fails most tasks
    ]
    assert winner(scores) == "cheap"
    assert winner(list(reversed(scores))) == "cheap"
    assert winner([_score("none", 0, 4, 0.3), _score("zero", 0, 4, 0.0)]) is None
    assert winner([_score("none", 0, 4, 0.3), _score("one", 1, 4, 0.9)]) == "one"


# --- the CLI -------------------------------------------------------------------------------

TAX = "sample_projects/tax_return"
CASCADE_FILE = f"{TAX}/experiments/cascade.toml"
STRONG_FILE = f"{TAX}/experiments/strong.toml"


def test_cli_experiment_on_tax_return_prefers_the_cascade(tmp_path: Path) -> None:
    db = tmp_path / "xp.db"
    proc = tower(
        "experiment", TAX, "--variants", CASCADE_FILE, STRONG_FILE, "--json", "--db", str(db)
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    by_name = {v["name"]: v for v in out["variants"]}
    assert list(by_name) == ["cascade", "strong"]
    for v in by_name.values():
        assert (v["successes"], v["tasks"]) == (5, 5), v
        fig = figures(db_events(db, v["session"]))
        assert fig.successes == 5
        assert v["cost_usd"] == pytest.approx(fig.cost_usd, abs=1e-6)
        assert v["cost_per_success"] == pytest.approx(fig.cost_usd / 5, abs=1e-6)
    assert by_name["cascade"]["cost_per_success"] < by_name["strong"]["cost_per_success"]
    assert out["winner"] == "cascade"
    assert sorted(db_sessions(db)) == sorted(v["session"] for v in by_name.values())


def test_cli_experiment_shows_what_caching_and_compaction_save(tmp_path: Path) -> None:
    """The caching variants of tax_return: the same five successes; prompt caching costs
    less per success than none, by what its calls record as saved; compaction folds (its
    summaries paid) and still succeeds."""
    db = tmp_path / "xp.db"
    files = [f"{TAX}/experiments/{n}.toml" for n in ("nocache", "cached", "compact")]
    proc = tower("experiment", TAX, "--variants", *files, "--json", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    by_name = {v["name"]: v for v in json.loads(proc.stdout)["variants"]}
    for v in by_name.values():
        assert (v["successes"], v["tasks"]) == (5, 5), v
        events = db_events(db, v["session"])
        assert v["cost_usd"] == pytest.approx(figures(events).cost_usd, abs=1e-6)
        saved = sum(
            e.payload.get("saved_usd", 0) for e in events if e.kind is EventKind.LLM_FINISHED
        )
        assert v["saved_usd"] == pytest.approx(saved, abs=1e-9)
    plain, cached, compact = by_name["nocache"], by_name["cached"], by_name["compact"]
    assert plain["saved_usd"] == 0 and plain["compactions"] == 0
    assert cached["cost_per_success"] < plain["cost_per_success"]
    # Same calls, same tokens: what caching saved is exactly what the plain run paid more.
    assert cached["tokens"] == plain["tokens"]
    assert cached["cost_usd"] + cached["saved_usd"] == pytest.approx(plain["cost_usd"], abs=2e-6)
    assert compact["compactions"] > 0 and cached["compactions"] == 0
    folds = [e for e in db_events(db, compact["session"]) if e.kind is EventKind.COMPACTED]
    assert len(folds) == compact["compactions"] and all(f.payload["cost_usd"] > 0 for f in folds)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--variants", CASCADE_FILE, "missing/nowhere.toml"], "nowhere.toml: no such variant"),
        (["--variants", CASCADE_FILE], "at least two"),
        (["--variants", CASCADE_FILE, STRONG_FILE, "--tasks", "0"], "--tasks"),
    ],
    ids=["missing-file", "one-variant", "tasks-0"],
)
def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path, extra: list[str], says: str) -> None:
    db = tmp_path / "xp.db"
    proc = tower("experiment", TAX, *extra, "--db", str(db))
    one_line_error(proc, says)
    assert proc.stdout == ""
    assert not db.exists()  # nothing ran


def test_cli_bad_variant_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = variant(tmp_path, "bad", "[budget]\nusdd = 1.0\n")
    db = tmp_path / "xp.db"
    proc = tower("experiment", TAX, "--variants", CASCADE_FILE, str(bad), "--db", str(db))
    one_line_error(proc, str(bad), "usdd")
    assert not db.exists()
