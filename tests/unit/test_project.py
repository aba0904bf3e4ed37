"""Loading and validating tower.toml (tower/core/project.py): documented defaults, and one
readable line per problem naming the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_project
from tower.core.project import (
    BUILTIN_TOOLS,
    DEFAULT_TOOLS,
    PROJECT_FILE,
    Project,
    ProjectError,
    load_project,
    parse_project,
)
from tower.core.simprofiles import FAULT_NAMES, SIM_PROFILES

MINIMAL = """
[project]
name = "demo"

[[agents]]
name = "worker"
"""


def _problems(root: Path, toml: str) -> tuple[Path, list[str]]:
    write_project(root, toml)
    with pytest.raises(ProjectError) as info:
        load_project(root)
    problems = info.value.problems
    assert problems, "a ProjectError must carry at least one problem"
    assert str(info.value) == "\n".join(problems)
    for line in problems:
        assert "\n" not in line, f"not one line: {line!r}"
    return root / PROJECT_FILE, problems


def _one_problem(root: Path, toml: str) -> str:
    file, problems = _problems(root, toml)
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"{file}: "), line
    return line


# --- a valid project --------------------------------------------------------------------


def test_minimal_project_loads_with_documented_defaults(tmp_path: Path) -> None:
    p = load_project(write_project(tmp_path / "proj", MINIMAL))
    assert isinstance(p, Project)
    assert p.name == "demo"
    assert p.root == (tmp_path / "proj").resolve()
    meta = p.project
    assert meta.description == ""
    assert meta.seed == 0
    assert meta.call_timeout_s == 60.0
    assert meta.max_retries == 3
    assert meta.retry_backoff_s == 0.5
    assert meta.copy_workspaces is True
    assert (p.budget.usd, p.budget.tokens) == (None, None)
    assert (p.budget.thread_usd, p.budget.thread_tokens) == (None, None)
    assert p.limits.max_concurrent == 16
    assert p.models == {}
    assert (p.policy.deny, p.policy.ask, p.policy.allow) == ([], [], [])
    assert p.shell.timeout_s == 120.0 and p.shell.max_output_bytes == 20_000
    assert p.mcp_servers == []
    assert p.tasks == []
    (agent,) = p.agents
    assert agent.name == "worker"
    assert agent.cascade == ["sim/small"]
    assert agent.tools == list(DEFAULT_TOOLS)
    assert agent.mcp == []
    assert agent.max_steps == 20
    assert agent.max_tokens == 512
    assert agent.system_prompt  # a default prompt is provided
    assert p.all_models() == ["sim/small"]
    assert p.agent("worker") is agent
    with pytest.raises(KeyError):
        p.agent("nobody")
    # A model without its own section gets default settings.
    assert p.model_settings("sim/small").max_concurrent is None
    assert p.model_settings("sim/small").sim_overrides() == {}


def test_full_project_reads_every_section(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    p = load_project(
        write_project(
            root,
            """
            [project]
            name = "full"
            seed = 9
            copy_workspaces = false

            [budget]
            usd = 2.5
            tokens = 100000
            thread_usd = 0.5

            [limits]
            max_concurrent = 4

            [models."sim/small"]
            max_concurrent = 2
            latency_s = 0.0
            faults = { rate_limit = 0.25 }

            [policy]
            ask = []

            [[agents]]
            name = "a"
            cascade = ["sim/small", "sim/large"]
            tools = ["read_file", "finish"]

            [[agents]]
            name = "b"

            [[tasks]]
            id = "t1"
            agent = "a"
            prompt = "go"
            workspace = "data"
            repeat = 3
            priority = 2

            [[tasks.script]]
            say = "reading"
            tool = "read_file"
            args = { path = "x.txt" }
            """,
        )
    )
    assert p.project.seed == 9
    assert p.project.copy_workspaces is False
    assert p.budget.usd == 2.5
    assert p.budget.tokens == 100000
    assert p.budget.thread_usd == 0.5
    assert p.limits.max_concurrent == 4
    assert p.policy.ask == []
    assert p.all_models() == ["sim/small", "sim/large"]
    ms = p.model_settings("sim/small")
    assert ms.max_concurrent == 2
    assert ms.sim_overrides() == {"latency_s": 0.0, "faults": {"rate_limit": 0.25}}
    task = p.task("t1")
    assert (task.agent, task.workspace, task.repeat, task.priority) == ("a", "data", 3, 2)
    assert task.script[0].tool == "read_file"
    assert task.script[0].args == {"path": "x.txt"}


def test_load_accepts_the_toml_file_itself(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", MINIMAL)
    assert load_project(root / PROJECT_FILE).name == "demo"


def test_load_accepts_a_string_path(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", MINIMAL)
    assert load_project(str(root)).name == "demo"


# --- one line per problem ------------------------------------------------------------------


def test_invalid_toml(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, '[project]\nname = "x"\nbroken = \n')
    assert "not valid TOML" in line
    assert "line 3" in line


def test_missing_project_section(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, '[[agents]]\nname = "w"\n')
    assert f"{PROJECT_FILE}: project: " in line
    assert "missing" in line


def test_missing_agents(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, '[project]\nname = "x"\n')
    assert ": agents: " in line
    assert "missing" in line


def test_unknown_key_typo(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + "max_step = 5\n")
    assert ": agents[0].max_step: " in line
    assert "unknown key" in line


def test_unknown_top_level_table(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + "[budgets]\nusd = 1.0\n")
    assert ": budgets: " in line
    assert "unknown key" in line


def test_unknown_key_says_what_was_expected(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + "max_step = 5\n")
    assert "max_steps" in line


def test_wrong_type(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[limits]\nmax_concurrent = "many"\n')
    assert ": limits.max_concurrent: " in line
    assert "integer" in line


def test_wrong_type_in_a_list_names_the_index(tmp_path: Path) -> None:
    line = _one_problem(
        tmp_path, MINIMAL.replace('name = "worker"', 'name = "worker"\ncascade = [3]')
    )
    assert ": agents[0].cascade[0]: " in line
    assert "string" in line


def test_out_of_range_value(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + "[budget]\nusd = -1.0\n")
    assert ": budget.usd: " in line
    assert "greater than 0" in line


def test_unknown_agent_in_task(tmp_path: Path) -> None:
    line = _one_problem(
        tmp_path, MINIMAL + '[[tasks]]\nid = "t"\nagent = "nobody"\nprompt = "go"\n'
    )
    assert ": tasks[0].agent: " in line
    assert "'nobody'" in line
    assert "worker" in line  # what was expected


def test_unknown_tool(tmp_path: Path) -> None:
    toml = MINIMAL.replace('name = "worker"', 'name = "worker"\ntools = ["read_file", "shell"]')
    line = _one_problem(tmp_path, toml)
    assert ": agents[0].tools[1]: " in line
    assert "'shell'" in line
    for tool in BUILTIN_TOOLS:
        assert tool in line


def test_unknown_tool_in_policy(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[policy]\nask = ["rm_rf"]\n')
    assert ": policy.ask[0]: " in line
    assert "'rm_rf'" in line


def test_unknown_tool_in_policy_says_what_was_expected(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[policy]\nask = ["rm_rf"]\n')
    assert all(tool in line for tool in BUILTIN_TOOLS)


def test_unknown_sim_model_in_cascade(tmp_path: Path) -> None:
    toml = MINIMAL.replace(
        'name = "worker"', 'name = "worker"\ncascade = ["sim/small", "sim/huge"]'
    )
    line = _one_problem(tmp_path, toml)
    assert ": agents[0].cascade[1]: " in line
    assert "'sim/huge'" in line
    for name in SIM_PROFILES:
        assert name in line


def test_unknown_sim_model_section(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[models."sim/huge"]\nlatency_s = 1.0\n')
    assert ": models.sim/huge: " in line
    for name in SIM_PROFILES:
        assert name in line


def test_non_sim_models_are_not_checked_offline(tmp_path: Path) -> None:
    toml = MINIMAL.replace('name = "worker"', 'name = "worker"\ncascade = ["openai/gpt-4o-mini"]')
    p = load_project(write_project(tmp_path, toml))
    assert p.all_models() == ["openai/gpt-4o-mini"]


def test_duplicate_task_id(tmp_path: Path) -> None:
    task = '[[tasks]]\nid = "same"\nagent = "worker"\nprompt = "go"\n'
    file, problems = _problems(tmp_path, MINIMAL + task + task)
    dup = [line for line in problems if ": tasks[1].id: " in line]
    assert len(dup) == 1, problems
    assert dup[0].startswith(f"{file}: ")
    assert "duplicate" in dup[0]
    assert "'same'" in dup[0]


def test_duplicate_task_id_is_one_line(tmp_path: Path) -> None:
    task = '[[tasks]]\nid = "same"\nagent = "worker"\nprompt = "go"\n'
    line = _one_problem(tmp_path, MINIMAL + task + task)
    assert ": tasks[1].id: " in line


def test_script_tool_not_among_agent_tools(tmp_path: Path) -> None:
    toml = (
        MINIMAL.replace('name = "worker"', 'name = "worker"\ntools = ["read_file", "finish"]')
        + '[[tasks]]\nid = "t"\nagent = "worker"\nprompt = "go"\n'
        + '[[tasks.script]]\nsay = "hi"\n'
        + '[[tasks.script]]\ntool = "write_file"\nargs = { path = "a" }\n'
    )
    line = _one_problem(tmp_path, toml)
    assert ": tasks[0].script[1].tool: " in line
    assert "'write_file'" in line
    assert "read_file" in line
    assert "finish" in line


def test_missing_workspace_folder(tmp_path: Path) -> None:
    toml = MINIMAL + '[[tasks]]\nid = "t"\nagent = "worker"\nprompt = "go"\nworkspace = "data"\n'
    line = _one_problem(tmp_path, toml)
    assert ": tasks[0].workspace: " in line
    assert "'data'" in line
    assert "does not exist" in line
    (tmp_path / "data").mkdir()
    assert load_project(tmp_path).tasks[0].workspace == "data"


def test_workspace_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    toml = MINIMAL + '[[tasks]]\nid = "t"\nagent = "worker"\nprompt = "go"\nworkspace = "data"\n'
    line = _one_problem(tmp_path, toml)
    assert ": tasks[0].workspace: " in line


def test_missing_project_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ProjectError) as info:
        load_project(missing)
    (line,) = info.value.problems
    assert str(missing) in line
    assert "no such project folder" in line


def test_missing_tower_toml(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path / "empty")
    (line,) = info.value.problems
    assert line.startswith(str(tmp_path / "empty" / PROJECT_FILE))
    assert PROJECT_FILE in line
    assert "missing" in line


def test_unknown_fault_name(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[models."sim/small"]\nfaults = { meteor = 0.1 }\n')
    assert ": models.sim/small: " in line
    assert "'meteor'" in line
    for name in FAULT_NAMES:
        assert name in line


def test_fault_chance_out_of_range(tmp_path: Path) -> None:
    line = _one_problem(tmp_path, MINIMAL + '[models."sim/small"]\nfaults = { timeout = 1.5 }\n')
    assert ": models.sim/small: " in line
    assert "'timeout'" in line
    assert "between 0 and 1" in line


def test_unknown_fault_in_script_step(tmp_path: Path) -> None:
    toml = (
        MINIMAL
        + '[[tasks]]\nid = "t"\nagent = "worker"\nprompt = "go"\n'
        + '[[tasks.script]]\nfault = "meteor"\n'
    )
    line = _one_problem(tmp_path, toml)
    assert ": tasks[0].script[0].fault: " in line
    assert "rate_limit" in line


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    toml = (
        MINIMAL.replace('name = "worker"', 'name = "worker"\ntools = ["shell"]')
        + '[[tasks]]\nid = "t"\nagent = "ghost"\nprompt = "go"\n'
    )
    file, problems = _problems(tmp_path, toml)
    assert len(problems) == 2
    assert all(line.startswith(f"{file}: ") for line in problems)
    assert any(": agents[0].tools[0]: " in line for line in problems)
    assert any(": tasks[0].agent: " in line for line in problems)


def test_parse_project_uses_the_given_file_name(tmp_path: Path) -> None:
    with pytest.raises(ProjectError) as info:
        parse_project("[project]\n", tmp_path, "custom.toml")
    assert all(line.startswith("custom.toml: ") for line in info.value.problems)
    assert any(": project.name: " in line for line in info.value.problems)
