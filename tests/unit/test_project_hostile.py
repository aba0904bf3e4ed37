"""Hostile and broken tower.toml files (issue 11, point 7): each is refused with one readable
line naming the file, the key and what was expected — never a traceback, never accepted.

Covers nesting deeper than tomllib or pydantic can take, inf and nan in money fields, NUL,
control and invisible characters in names, duplicates, workspaces outside the project folder,
wrong types, out-of-range numbers and files that are not UTF-8 text."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, one_line_error, tower, write_project
from tower.core.experiment import load_variant
from tower.core.project import MAX_FILE_BYTES, PROJECT_FILE, ProjectError, load_project

HEAD = """[project]
name = "demo"
"""
AGENT = """
[[agents]]
name = "worker"
"""
TASK = """
[[tasks]]
id = "t"
agent = "worker"
prompt = "go"
"""
VALID = HEAD + AGENT + TASK


@dataclass
class Variant:
    id: str
    toml: str | bytes | None  # None: `setup` makes tower.toml itself
    key: str  # the problem line starts with "<file>: <key>" ("" for problems of the file)
    expect: str  # words of what was expected (or what is wrong), in the same line
    setup: Callable[[Path], None] | None = None


def _deep(opener: str, closer: str, n: int) -> str:
    return "deep = " + opener * n + "1" * (opener == "{a = ") + closer * n + "\n"


def _mkdir(*names: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for name in names:
            (root / name).mkdir(parents=True, exist_ok=True)

    return make


def _symlink(name: str, target: Callable[[Path], Path]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).symlink_to(target(root))

    return make


def _file(name: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).write_text("not a folder", encoding="utf-8")

    return make


def _loop(root: Path) -> None:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")


def _dir_as_file(root: Path) -> None:
    (root / PROJECT_FILE).mkdir()


def _dev_zero(root: Path) -> None:
    (root / PROJECT_FILE).symlink_to("/dev/zero")


def _task(**fields: str) -> str:
    return TASK + "".join(f"{k} = {v}\n" for k, v in fields.items())


def _ws(value: str) -> str:
    return HEAD + AGENT + _task(workspace=value)


VARIANTS = [
    # --- nesting -------------------------------------------------------------------------
    Variant("arrays-500", _deep("[", "]", 500) + VALID, "deep", "nested too deeply"),
    Variant("inline-tables-500", _deep("{a = ", "}", 500) + VALID, "deep", "nested too deeply"),
    Variant("arrays-100000", _deep("[", "]", 100_000) + VALID, "deep", "nested too deeply"),
    Variant("arrays-100", _deep("[", "]", 100) + VALID, "deep[0]", "nested too deeply"),
    Variant(
        "dotted-tables-300",
        VALID + "[" + ".".join(["a"] * 300) + "]\nx = 1\n",
        "a.a.a",
        "nested too deeply",
    ),
    Variant(
        "deep-script-args",
        VALID + '[[tasks.script]]\ntool = "finish"\nargs = { x = ' + "[" * 60 + "]" * 60 + " }\n",
        "tasks[0].script[0].args.x",
        "at most 32 levels",
    ),
    # --- inf and nan ---------------------------------------------------------------------
    Variant("usd-inf", VALID + "[budget]\nusd = inf\n", "budget.usd", "finite number, got inf"),
    Variant("usd-minus-inf", VALID + "[budget]\nusd = -inf\n", "budget.usd", "finite number"),
    Variant("usd-nan", VALID + "[budget]\nusd = nan\n", "budget.usd", "finite number, got nan"),
    Variant("usd-1e999", VALID + "[budget]\nusd = 1e999\n", "budget.usd", "finite number"),
    Variant(
        "thread-usd-inf", VALID + "[budget]\nthread_usd = +inf\n", "budget.thread_usd", "finite"
    ),
    Variant(
        "human-minutes-nan",
        VALID + "[budget]\nhuman_minutes = nan\n",
        "budget.human_minutes",
        "finite number",
    ),
    Variant(
        "routine-usd-inf", VALID + "[budget]\nroutine_usd = inf\n", "budget.routine_usd", "finite"
    ),
    Variant(
        "input-price-inf",
        VALID + '[models."sim/small"]\ninput_usd_per_mtok = inf\n',
        "models.sim/small.input_usd_per_mtok",
        "finite number",
    ),
    Variant(
        "output-price-nan",
        VALID + '[models."sim/small"]\noutput_usd_per_mtok = nan\n',
        "models.sim/small.output_usd_per_mtok",
        "finite number",
    ),
    Variant(
        "fault-chance-nan",
        VALID + '[models."sim/small"]\nfaults = { rate_limit = nan }\n',
        "models.sim/small.faults.rate_limit",
        "finite number",
    ),
    Variant(
        "task-budget-inf", HEAD + AGENT + _task(budget_usd="inf"), "tasks[0].budget_usd", "finite"
    ),
    Variant(
        "escalation-usd-nan",
        HEAD + AGENT + "max_escalation_usd = nan\n" + TASK,
        "agents[0].max_escalation_usd",
        "finite number",
    ),
    Variant(
        "call-timeout-inf",
        HEAD + "call_timeout_s = inf\n" + AGENT,
        "project.call_timeout_s",
        "finite",
    ),
    Variant(
        "script-arg-inf",
        VALID + '[[tasks.script]]\ntool = "finish"\nargs = { answer = inf }\n',
        "tasks[0].script[0].args.answer",
        "finite number",
    ),
    # --- NUL, control and invisible characters, blank and long names ----------------------
    Variant("project-name-nul", '[project]\nname = "a\\u0000b"\n' + AGENT, "project.name", "NUL"),
    Variant("project-name-empty", '[project]\nname = ""\n' + AGENT, "project.name", "at least 1"),
    Variant("project-name-blank", '[project]\nname = "   "\n' + AGENT, "project.name", "blank"),
    Variant(
        "project-name-newline", '[project]\nname = "a\\nb"\n' + AGENT, "project.name", "control"
    ),
    Variant(
        "project-name-bidi-override",
        '[project]\nname = "abc\\u202Etxt.exe"\n' + AGENT,
        "project.name",
        "U+202E",
    ),
    Variant(
        "project-name-long",
        HEAD.replace("demo", "x" * 100_000) + AGENT,
        "project.name",
        "at most 200",
    ),
    Variant("agent-name-nul", HEAD + '[[agents]]\nname = "w\\u0000"\n', "agents[0].name", "NUL"),
    Variant("agent-name-space", HEAD + '[[agents]]\nname = "a b"\n', "agents[0].name", "letters"),
    Variant("agent-name-dotdot", HEAD + '[[agents]]\nname = ".."\n', "agents[0].name", "letters"),
    Variant(
        "agent-name-path", HEAD + '[[agents]]\nname = "a/../../x"\n', "agents[0].name", "letters"
    ),
    Variant(
        "agent-name-long",
        HEAD + '[[agents]]\nname = "' + "a" * 5000 + '"\n',
        "agents[0].name",
        "at most 200",
    ),
    Variant(
        "task-id-newline",
        HEAD + AGENT + TASK.replace('id = "t"', 'id = "t\\n"'),
        "tasks[0].id",
        "letters",
    ),
    Variant(
        "task-id-dotdot",
        HEAD + AGENT + TASK.replace('id = "t"', 'id = ".."'),
        "tasks[0].id",
        "letters",
    ),
    Variant(
        "title-escape-sequence",
        HEAD + AGENT + _task(title='"\\u001b[2Jhi"'),
        "tasks[0].title",
        "control",
    ),
    Variant("title-blank", HEAD + AGENT + _task(title='"\\t"'), "tasks[0].title", "blank"),
    Variant(
        "task-agent-empty",
        HEAD + AGENT + TASK.replace('agent = "worker"', 'agent = ""'),
        "tasks[0].agent",
        "at least 1",
    ),
    Variant(
        "cascade-bell",
        HEAD + AGENT + 'cascade = ["sim/small\\u0007"]\n',
        "agents[0].cascade[0]",
        "U+0007",
    ),
    Variant(
        "cascade-empty-name",
        HEAD + AGENT + 'cascade = [""]\n',
        "agents[0].cascade[0]",
        "at least 1",
    ),
    Variant(
        "tool-nul", HEAD + AGENT + 'tools = ["read_file\\u0000"]\n', "agents[0].tools[0]", "NUL"
    ),
    Variant(
        "tool-leading-space",
        HEAD + AGENT + 'tools = [" finish"]\n',
        "agents[0].tools[0]",
        "leading",
    ),
    Variant(
        "mcp-zero-width", HEAD + AGENT + 'mcp = ["\\u200b"]\n', "agents[0].mcp[0]", "invisible"
    ),
    Variant(
        "mcp-server-name-nul",
        VALID + '[[mcp_servers]]\nname = "s\\u0000"\ncommand = "x"\n',
        "mcp_servers[0].name",
        "NUL",
    ),
    Variant(
        "mcp-command-nul",
        VALID + '[[mcp_servers]]\nname = "s"\ncommand = "python\\u0000 -c"\n',
        "mcp_servers[0].command",
        "NUL",
    ),
    Variant(
        "model-key-newline",
        VALID + '[models."sim/small\\n"]\nrpm = 5\n',
        "models.'sim/small\\n': ",
        "control",
    ),
    Variant(
        "policy-agent-control",
        VALID + '[policy]\nallow = [{ tool = "finish", agent = "w\\u0001" }]\n',
        "policy.allow[0]",
        "control",
    ),
    Variant(
        "script-tool-blank",
        VALID + '[[tasks.script]]\ntool = " "\n',
        "tasks[0].script[0].tool",
        "blank",
    ),
    Variant(
        "prompt-nul", HEAD + AGENT + TASK.replace('"go"', '"g\\u0000o"'), "tasks[0].prompt", "NUL"
    ),
    Variant(
        "check-command-nul",
        HEAD + AGENT + TASK + 'check = { command = "true\\u0000" }\n',
        "tasks[0].check.command",
        "NUL",
    ),
    Variant(
        "unknown-key-with-newline",
        '"a\\nb" = 1\n' + VALID,
        "'a\\nb'",
        "unknown key",
    ),
    # --- duplicates and references -------------------------------------------------------
    Variant(
        "cascade-duplicate",
        HEAD + AGENT + 'cascade = ["sim/small", "sim/small"]\n',
        "agents[0].cascade[1]",
        "expected each entry once",
    ),
    Variant(
        "tools-duplicate",
        HEAD + AGENT + 'tools = ["finish", "read_file", "finish"]\n',
        "agents[0].tools[2]",
        "already tools[0]",
    ),
    Variant(
        "mcp-duplicate",
        HEAD + AGENT + 'mcp = ["s", "s"]\n[[mcp_servers]]\nname = "s"\ncommand = "x"\n',
        "agents[0].mcp[1]",
        "expected each entry once",
    ),
    Variant("task-id-duplicate", VALID + TASK, "tasks[1].id", "duplicate task id"),
    Variant("agent-name-duplicate", HEAD + AGENT + AGENT, "agents[1].name", "duplicate agent name"),
    Variant(
        "task-unknown-agent",
        HEAD + AGENT + TASK.replace('agent = "worker"', 'agent = "nobody"'),
        "tasks[0].agent",
        "expected one of worker",
    ),
    # --- workspaces ----------------------------------------------------------------------
    Variant("workspace-etc", _ws('"/etc"'), "tasks[0].workspace", "absolute path"),
    Variant(
        "workspace-dotdot-etc",
        _ws('"../../../../etc"'),
        "tasks[0].workspace",
        "outside the project",
    ),
    Variant(
        "workspace-sibling",
        _ws('"data/../../elsewhere"'),
        "tasks[0].workspace",
        "outside the project",
        _mkdir("data"),
    ),
    Variant(
        "workspace-symlink-out",
        _ws('"link"'),
        "tasks[0].workspace",
        "outside the project",
        _symlink("link", lambda root: Path("/etc")),
    ),
    Variant(
        "workspace-symlink-to-parent",
        _ws('"data/up"'),
        "tasks[0].workspace",
        "outside the project",
        lambda root: (_mkdir("data")(root), (root / "data" / "up").symlink_to(root.parent)),
    ),
    Variant("workspace-symlink-loop", _ws('"a"'), "tasks[0].workspace", "cannot resolve", _loop),
    Variant(
        "workspace-file", _ws('"notes.txt"'), "tasks[0].workspace", "is a file", _file("notes.txt")
    ),
    Variant("workspace-empty", _ws('""'), "tasks[0].workspace", "got an empty string"),
    Variant("workspace-blank", _ws('"  "'), "tasks[0].workspace", "got an empty string"),
    Variant("workspace-newline", _ws('"data\\n"'), "tasks[0].workspace", "control characters"),
    Variant("workspace-missing", _ws('"nowhere"'), "tasks[0].workspace", "does not exist"),
    # --- numbers and types ---------------------------------------------------------------
    Variant("repeat-huge", HEAD + AGENT + _task(repeat="1000001"), "tasks[0].repeat", "1000000"),
    Variant(
        "repeat-beyond-64-bit",
        HEAD + AGENT + _task(repeat="99999999999999999999999"),
        "tasks[0].repeat",
        "between -2^63 and 2^63-1",
    ),
    Variant(
        "repeat-5000-digits",
        HEAD + AGENT + _task(repeat="9" * 5000),
        "tasks.repeat",
        "integer too long",
    ),
    Variant(
        "threads-in-all",
        HEAD + AGENT + "".join(_task(repeat="500000").replace('"t"', f'"t{i}"') for i in range(3)),
        "tasks[2].repeat",
        "at most 1000000",
    ),
    Variant(
        "repeat-zero",
        HEAD + AGENT + _task(repeat="0"),
        "tasks[0].repeat",
        "greater than or equal to 1",
    ),
    Variant("usd-negative", VALID + "[budget]\nusd = -5\n", "budget.usd", "greater than 0"),
    Variant("tokens-zero", VALID + "[budget]\ntokens = 0\n", "budget.tokens", "greater than 0"),
    Variant(
        "max-concurrent-negative",
        VALID + "[limits]\nmax_concurrent = -1\n",
        "limits.max_concurrent",
        "greater than or equal to 1",
    ),
    Variant(
        "workers-negative",
        VALID + "[limits]\nworkers = -1\n",
        "limits.workers",
        "from 0 to 64",
    ),
    Variant(
        "workers-word",
        VALID + '[limits]\nworkers = "many"\n',
        "limits.workers",
        'expected "auto" or a number of processes from 0 to 64',
    ),
    Variant(
        "cache-prompt-word", VALID + '[cache]\nprompt = "yes"\n', "cache.prompt", "valid boolean"
    ),
    Variant(
        "cache-unknown-key",
        VALID + "[cache]\nresponse = true\n",
        "cache.response",
        "unknown key",
    ),
    Variant(
        "compaction-share-above-one",
        VALID + "[compaction]\nat = 2\n",
        "compaction.at",
        "less than or equal to 1",
    ),
    Variant(
        "lane-window-hour-25",
        VALID + '[lanes.night]\nwindow = "25:00-06:00"\n',
        "lanes.night.window",
        'expected local times "HH:MM-HH:MM"',
    ),
    Variant(
        "lane-window-empty",
        VALID + '[lanes.night]\nwindow = "01:00-01:00"\n',
        "lanes.night.window",
        "opens and closes at the same minute",
    ),
    Variant(
        "lane-poll-zero",
        VALID + "[lanes.batch]\npoll_s = 0\n",
        "lanes.batch.poll_s",
        "greater than 0",
    ),
    Variant(
        "task-lane-unknown",
        HEAD + AGENT + TASK + 'lane = "nightly"\n',
        "tasks[0].lane",
        "unknown lane 'nightly', expected batch",
    ),
    Variant(
        "context-window-tiny",
        VALID + '[models."sim/small"]\ncontext_window = 10\n',
        "models.sim/small.context_window",
        "greater than or equal to 256",
    ),
    Variant(
        "temperature-negative",
        HEAD + AGENT + "temperature = -1\n" + TASK,
        "agents[0].temperature",
        "greater than or equal to 0",
    ),
    Variant(
        "repeat-string", HEAD + AGENT + _task(repeat='"5"'), "tasks[0].repeat", "valid integer"
    ),
    Variant("repeat-float", HEAD + AGENT + _task(repeat="2.0"), "tasks[0].repeat", "valid integer"),
    Variant(
        "copy-workspaces-string",
        HEAD + 'copy_workspaces = "yes"\n' + AGENT,
        "project.copy_workspaces",
        "valid boolean",
    ),
    Variant("seed-date", HEAD + "seed = 1979-05-27\n" + AGENT, "project.seed", "valid integer"),
    Variant(
        "cascade-not-a-list",
        HEAD + AGENT + 'cascade = "sim/small"\n',
        "agents[0].cascade",
        "valid list",
    ),
    Variant("agents-a-table", HEAD + '[agents]\nname = "w"\n', "agents", "valid list"),
    Variant("project-a-string", 'project = "demo"\n' + AGENT, "project", "valid dictionary"),
    Variant("unknown-top-key", "colour = 1\n" + VALID, "colour", "unknown key; expected one of"),
    Variant("unknown-task-key", VALID + "colour = 1\n", "tasks[0].colour", "unknown key"),
    # --- the file itself -----------------------------------------------------------------
    Variant(
        "invalid-utf8",
        VALID.encode() + b"# caf\xe9\n",
        "",
        "not valid UTF-8 (byte 0xe9 on line 11)",
    ),
    Variant(
        "latin1-name",
        '[project]\nname = "caf\xe9"\n'.encode("latin-1") + AGENT.encode(),
        "",
        "UTF-8",
    ),
    Variant("raw-nul-byte", VALID.encode() + b'x = "a\x00b"\n', "", "not valid TOML"),
    Variant("empty-file", "", "(top level)", "expected a [project] table"),
    Variant("whitespace-only", " \n\t\n", "(top level)", "no settings"),
    Variant("comments-only", "# nothing here\n", "(top level)", "no settings"),
    Variant("bom-only", "\ufeff", "(top level)", "no settings"),
    Variant("too-large", "#" + "x" * MAX_FILE_BYTES + "\n" + VALID, "", "too large; expected"),
    Variant("is-a-folder", None, "", "is a folder; expected the project file", _dir_as_file),
    Variant("dev-zero", None, "", "not a regular file", _dev_zero),
    Variant("unterminated-string", HEAD + '[[agents]]\nname = "w\n', "", "not valid TOML"),
]


def _make(root: Path, v: Variant) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if v.setup is not None:
        v.setup(root)
    if v.toml is not None:  # as bytes: written exactly as the variant has it, never dedented
        write_project(root, v.toml if isinstance(v.toml, bytes) else v.toml.encode("utf-8"))
    return root


def _first_problem(root: Path) -> tuple[str, list[str]]:
    with pytest.raises(ProjectError) as info:
        load_project(root)
    problems = info.value.problems
    assert problems
    for line in problems:  # one printable line each: no raw newline, NUL or escape
        assert line.isprintable(), repr(line)
        assert len(line) < 1000, line[:200]
    return problems[0], problems


def test_there_are_at_least_forty_variants() -> None:
    assert len(VARIANTS) >= 40
    assert len({v.id for v in VARIANTS}) == len(VARIANTS)


@pytest.mark.parametrize("v", VARIANTS, ids=[v.id for v in VARIANTS])
def test_hostile_project_is_refused_in_one_line(tmp_path: Path, v: Variant) -> None:
    root = _make(tmp_path / "proj", v)
    first, _ = _first_problem(root)
    file = root / PROJECT_FILE
    prefix = f"{file}: {v.key}" if v.key else f"{file}: "
    assert first.startswith(prefix), (first, prefix)
    assert v.expect in first, first


def test_variants_differ_from_a_valid_project_only_by_the_fault(tmp_path: Path) -> None:
    """The base the variants start from loads: each refusal is the variant's doing."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / PROJECT_FILE).write_text(VALID, encoding="utf-8")
    assert load_project(root).tasks[0].id == "t"
    (root / "data").mkdir()
    (root / PROJECT_FILE).write_text(_ws('"data"'), encoding="utf-8")
    assert load_project(root).tasks[0].workspace == "data"
    (root / PROJECT_FILE).write_text(_ws('"./data/../data"'), encoding="utf-8")
    assert load_project(root).tasks[0].workspace == "./data/../data"


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / PROJECT_FILE).write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_project(root).name == "demo"


def test_a_symlink_inside_the_project_is_a_fine_workspace(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "real").mkdir(parents=True)
    (root / "alias").symlink_to(root / "real")
    (root / PROJECT_FILE).write_text(_ws('"alias"'), encoding="utf-8")
    assert load_project(root).tasks[0].workspace == "alias"


def test_names_may_hold_spaces_and_unicode(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    toml = (
        VALID.replace('name = "demo"', 'name = "Café taxes 2026"')
        + 'title = "Prépare — ok 👩\u200d💻 می\u200cخواهم"\n'
    )
    (root / PROJECT_FILE).write_text(toml, encoding="utf-8")
    p = load_project(root)
    assert p.name == "Café taxes 2026" and p.tasks[0].title.startswith("Prépare — ok 👩\u200d💻")


def test_an_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _make(tmp_path / "proj", Variant("x", VALID, "", ""))
    file = root / PROJECT_FILE
    if os.geteuid() != 0:
        file.chmod(0)
    else:  # root reads anything: make the open fail as it would for a user
        real_open = Path.open

        def refuse(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self == file:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)
    try:
        _, problems = _first_problem(root)
    finally:
        file.chmod(0o644)
    assert problems == [f"{file}: cannot read: Permission denied"]


# --- the real CLI: exit 2, one line, no traceback ---------------------------------------

CLI_SAMPLE = [
    "arrays-500",
    "arrays-100000",
    "usd-inf",
    "usd-nan",
    "project-name-nul",
    "title-escape-sequence",
    "cascade-duplicate",
    "workspace-etc",
    "workspace-dotdot-etc",
    "workspace-symlink-out",
    "repeat-5000-digits",
    "invalid-utf8",
    "is-a-folder",
    "empty-file",
    "model-key-newline",
]


@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_tower_check_exits_2_with_one_line(tmp_path: Path, name: str) -> None:
    (v,) = [v for v in VARIANTS if v.id == name]
    root = _make(tmp_path / "proj", v)
    proc = tower("check", str(root))
    line = one_line_error(proc, v.expect)
    assert line.startswith(f"{root / PROJECT_FILE}: {v.key}")
    assert proc.stdout == ""


# --- what must keep loading -------------------------------------------------------------

PROJECTS = sorted(
    str(p.parent.relative_to(REPO))
    for pattern in ("sample_projects/*/tower.toml", "tests/fixtures/*/tower.toml")
    for p in REPO.glob(pattern)
)


def test_the_samples_are_found() -> None:
    assert len(PROJECTS) >= 5, PROJECTS


@pytest.mark.parametrize("rel", PROJECTS)
def test_every_sample_and_fixture_project_still_loads(rel: str) -> None:
    project = load_project(REPO / rel)
    assert project.agents


@pytest.mark.parametrize(
    "variant",
    sorted(str(p.relative_to(REPO)) for p in REPO.glob("sample_projects/*/experiments/*.toml")),
)
def test_every_sample_experiment_variant_still_loads(variant: str) -> None:
    path = REPO / variant
    project = load_variant(path.parent.parent, path)
    assert project.agents


@pytest.mark.parametrize(("arrays", "ok"), [(27, True), (28, False)])
def test_the_depth_limit_is_exact(tmp_path: Path, arrays: int, ok: bool) -> None:
    """tasks(1) [0](2) script(3) [0](4) args(5): `x`'s arrays are levels 6 onwards."""
    nested = "[" * arrays + "]" * arrays
    toml = VALID + f'[[tasks.script]]\ntool = "finish"\nargs = {{ x = {nested} }}\n'
    root = _make(tmp_path / "proj", Variant("depth", toml, "", ""))
    if ok:
        assert load_project(root).tasks[0].script[0].args["x"]
    else:
        first, _ = _first_problem(root)
        assert "tasks[0].script[0].args.x[0]" in first and "nested too deeply" in first


def test_run_json_never_prints_infinity(tmp_path: Path) -> None:
    (v,) = [v for v in VARIANTS if v.id == "usd-inf"]
    root = _make(tmp_path / "proj", v)
    proc = tower("run", str(root), "--headless", "--json", "--db", str(tmp_path / "t.db"))
    line = one_line_error(proc)
    assert line == f"{root / PROJECT_FILE}: budget.usd: expected a finite number, got inf"
    assert proc.stdout == ""


def test_an_experiment_variant_is_held_to_the_same_rules(tmp_path: Path) -> None:
    from tower.core.experiment import ExperimentError

    root = _make(tmp_path / "proj", Variant("x", VALID, "", ""))
    variant = tmp_path / "v.toml"
    variant.write_text("[budget]\nusd = nan\n", encoding="utf-8")
    with pytest.raises(ExperimentError) as info:
        load_variant(root, variant)
    assert str(info.value).endswith("budget.usd: expected a finite number, got nan")
