"""The one policy every tool call goes through: deny, grants, ask, allow, then the default.

Pure functions over rules, so the agent loop, the inbox's "allow like this" key and the
policy view all judge a call the same way. The default is least privilege: reading inside
the workspace runs, everything else (writes, the shell, MCP tools) asks the human.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tower.core.shellparse import ShellLine, read_shell


class Action(StrEnum):
    DENY = "deny"
    ASK = "ask"
    ALLOW = "allow"


# Read-only tools confined to the workspace: the only ones that run without asking by default.
READ_TOOLS = frozenset({"read_file", "list_dir", "search"})
# Talking to the human, waiting for one's own sub-agents and ending the task are never gated.
UNGATED = frozenset({"ask_human", "finish", "wait_agents"})
# Arguments holding a workspace path: matched after normalising, so `src/../x` is not `src/**`.
PATH_ARGS = frozenset({"path", "file", "folder", "directory", "repo_path"})
# Shell argument: deny/ask match any piece of a compound command; allow needs every piece.
# The line is read by a real parser (tower/core/shellparse.py); a line it cannot see through
# ("opaque": eval, functions, xargs, ${IFS}, case, …) matches every deny and ask rule on the
# tool and is never allowed by an allow rule or a grant.
COMMAND_ARGS = frozenset({"command", "cmd"})
# Commands whose first words say what they do, so "allow this verb" is a fair suggestion.
_RUNNERS = {
    ("python", "-m"): 3,
    ("python3", "-m"): 3,
    ("pytest",): 1,
    ("make",): 1,
    ("npm", "test"): 2,
    ("npm", "run"): 3,
    ("cargo", "test"): 2,
    ("cargo", "build"): 2,
    ("go", "test"): 2,
    ("ls",): 1,
    ("cat",): 1,
    ("grep",): 1,
}
# Commands that read (or copy) the files they name: an allow rule or a grant covers them only
# when every file they name is a relative path that stays inside the workspace, so a grant
# for `cat notes.txt` never covers `cat /proc/$PPID/environ` or `cat ../../etc/shadow`.
READERS = frozenset(
    {
        "cat", "tac", "head", "tail", "less", "more", "nl", "wc", "od", "xxd", "hexdump",
        "strings", "file", "stat", "ls", "tree", "du", "grep", "egrep", "fgrep", "rg", "ag",
        "diff", "cmp", "sort", "uniq", "cut", "md5sum", "sha1sum", "sha256sum", "sha512sum",
        "base64", "readlink", "realpath", "find", "cp", "ln", "tar", "zip", "dd", "rsync",
        "awk", "sed", "jq", "column", "paste", "join", "comm", "fold", "iconv", "split",
    }
)  # fmt: skip
_GLOB_CHARS = re.compile(r"\[[*?\[]\]|[*?\[]")


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: an action for calls whose tool name and arguments match the globs."""

    action: Action
    tool: str = "*"
    args: tuple[tuple[str, str], ...] = ()
    agent: str | None = None
    expires: float | None = None  # wall clock; None = for the whole session
    source: str = "tower.toml"
    id: str = ""

    def active(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def matches(self, tool: str, args: Mapping[str, Any], agent: str | None) -> bool:
        if not fnmatch.fnmatchcase(tool, self.tool):
            return False
        if self.agent is not None and self.agent != agent:
            return False
        for name, glob in self.args:
            if name not in args:
                return False
            if not _arg_matches(name, args[name], glob, every=self.action is Action.ALLOW):
                return False
        # Not even a rule allowing the whole tool covers a shell line tower cannot see through.
        return not (self.action is Action.ALLOW and _opaque_command(args))

    def describe(self) -> str:
        parts = [str(self.action), self.tool]
        parts += [f"{k}={v}" for k, v in self.args]
        if self.agent:
            parts.append(f"(agent {self.agent})")
        if self.expires is not None:
            parts.append("until " + time.strftime("%H:%M:%S", time.localtime(self.expires)))
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": str(self.action),
            "tool": self.tool,
            "args": dict(self.args),
            "agent": self.agent,
            "expires": self.expires,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        return cls(
            action=Action(d["action"]),
            tool=str(d.get("tool", "*")),
            args=tuple((str(k), str(v)) for k, v in (d.get("args") or {}).items()),
            agent=d.get("agent"),
            expires=d.get("expires"),
            source=str(d.get("source", "tower.toml")),
            id=str(d.get("id", "")),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    rule: Rule | None = None
    why: str = field(default="")

    def describe(self) -> str:
        if self.rule is not None:
            text = f"rule {self.rule.describe()} ({self.rule.source})"
            return f"{text}: {self.why}" if self.why else text
        return self.why


def _norm_path(value: str) -> str:
    path = posixpath.normpath(value.replace("\\", "/")) if value else "."
    return path.removeprefix("./")


def command_pieces(command: str) -> list[str]:
    """The simple commands of a shell line as they will run, nested ones included.

    `a && b; c | d` → a, b, c, d; `sudo -u root rm -rf /` → `sudo -u root rm -rf /` and
    `rm -rf /`; `echo $(rm x)` → `rm x` and `echo $(rm x)`. Parsed by bashlex (see
    tower/core/shellparse.py); whether the line is opaque is `shell_opaque`.
    """
    return read_shell(command).plain


def shell_opaque(command: str) -> str:
    """Why tower cannot see what a shell line runs ("" if it can)."""
    return read_shell(command).opaque


def _confined(source: str, word: str) -> bool:
    """A word given to a reading command names nothing outside the workspace: no absolute
    path, no `..` above the top, nothing computed at run time (`$…`, `~`, braces), no glob
    that could match `..`."""
    if any(c in source for c in "$`~{}"):
        return False
    if word.startswith("-"):
        if "=" in word:
            word = word.split("=", 1)[1]
        else:
            return "/" not in word and ".." not in word  # not `-f/etc/shadow`
    if "=" in word and word.split("=", 1)[0].isalpha():
        word = word.split("=", 1)[1]  # dd's `if=/proc/…`
    if word.startswith("/") or "\x00" in word:
        return False
    path = posixpath.normpath(word) if word else "."
    if path == ".." or path.startswith("../"):
        return False
    for part in word.split("/"):
        if "[" in part or (part.startswith(".") and any(c in part for c in "*?")):
            return False  # `.*` matches `..`
    return True


def _readers_confined(line: ShellLine) -> bool:
    return all(
        all(_confined(s, w) for s, w in zip(piece.sources[1:], piece.words[1:], strict=True))
        for piece in line.pieces
        if piece.words and piece.words[0] in READERS
    )


def _literal(glob: str) -> bool:
    """A glob with no wildcard left once escapes like `[*]` are read as the character."""
    return not any(m.group() in "*?[" for m in _GLOB_CHARS.finditer(glob))


def _unglob(glob: str) -> str:
    return _GLOB_CHARS.sub(lambda m: m.group()[1] if len(m.group()) == 3 else m.group(), glob)


def escape_glob(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _arg_matches(name: str, value: Any, glob: str, *, every: bool) -> bool:
    text = value if isinstance(value, str) else str(value)
    if name in PATH_ARGS:
        path = _norm_path(text)
        if every and (path == ".." or path.startswith("../") or path.startswith("/")):
            return False  # an allow rule never covers a path that leaves the workspace
        return fnmatch.fnmatchcase(path, glob)
    if name in COMMAND_ARGS:
        line = read_shell(text)
        if every:
            # Allowing `pytest*` must not allow `pytest; rm -rf ~`, `pytest $(curl …)`,
            # `pytest > ~/.bashrc`, `eval …`, or `cat /proc/$PPID/environ` under `cat *`.
            if line.opaque or not _readers_confined(line):
                return False
            if _literal(glob):
                return text.strip() == _unglob(glob).strip()  # exactly this line, as granted
            if line.substitution or line.unsafe_redirect or not line.written:
                return False
            # Pieces as written: `LD_PRELOAD=x pytest` or `sudo pytest` is not `pytest*`.
            return all(fnmatch.fnmatchcase(p, glob) for p in line.written)
        if line.opaque:
            return True  # fail closed: a line tower cannot see through matches every deny
        return (
            fnmatch.fnmatchcase(text.strip(), glob)
            or any(fnmatch.fnmatchcase(p, glob) for p in line.plain)
            or any(fnmatch.fnmatchcase(p, glob) for p in line.written)
        )
    return fnmatch.fnmatchcase(text, glob)


def workspace_relative(args: Mapping[str, Any], root: str | None) -> dict[str, Any]:
    """Path arguments given as absolute paths inside the workspace, made relative, so a
    rule on `secrets/**` also sees `/…/workspace/secrets/x`."""
    out = dict(args)
    if not root:
        return out
    prefix = root.rstrip("/") + "/"
    for name in PATH_ARGS & out.keys():
        value = out[name]
        if isinstance(value, str) and value.startswith("/"):
            value = posixpath.normpath(value)  # `/ws//secrets/k` is `/ws/secrets/k`
            if (value + "/").startswith(prefix):
                out[name] = value[len(prefix) :] or "."
    return out


def default_verdict(tool: str) -> Verdict:
    if tool in READ_TOOLS:
        return Verdict(Action.ALLOW, why="default: reading inside the workspace")
    if tool in UNGATED:
        return Verdict(Action.ALLOW, why="default: never gated")
    return Verdict(Action.ASK, why="default: ask the human")


def decide(
    rules: Iterable[Rule],
    tool: str,
    args: Mapping[str, Any],
    agent: str | None = None,
    now: float | None = None,
    grants: Iterable[Rule] = (),
) -> Verdict:
    """Deny wins, then the human's time-boxed grants, then ask, then allow, then the default.

    A grant outranks tower.toml's `ask` because it is that ask, answered in advance by the
    human for a while; nothing outranks a `deny`.
    """
    if tool in UNGATED:
        return default_verdict(tool)
    now = time.time() if now is None else now
    live = [r for r in rules if r.active(now)]
    opaque = _opaque_command(args)
    why = f"tower cannot see through this shell line: {opaque}" if opaque else ""
    for rule in live:
        if rule.action is Action.DENY and rule.matches(tool, args, agent):
            return Verdict(Action.DENY, rule, why)
    for rule in grants:
        if rule.active(now) and rule.matches(tool, args, agent):
            return Verdict(Action.ALLOW, rule)
    for action in (Action.ASK, Action.ALLOW):
        for rule in live:
            if rule.action is action and rule.matches(tool, args, agent):
                return Verdict(action, rule, why if action is Action.ASK else "")
    verdict = default_verdict(tool)
    if opaque and verdict.action is Action.ASK:
        return Verdict(Action.ASK, why=f"{verdict.why} ({why})")
    return verdict


def _opaque_command(args: Mapping[str, Any]) -> str:
    """Why a call's shell line is opaque ("" if it has none or tower can read it)."""
    for name in sorted(COMMAND_ARGS & args.keys()):
        value = args[name]
        if isinstance(value, str):
            reason = shell_opaque(value)
            if reason:
                return reason
    return ""


def parse_rule(spec: str | Mapping[str, Any], action: Action, source: str, rid: str) -> Rule:
    """A rule from tower.toml: a tool glob string, or a table {tool, args, agent}."""
    if isinstance(spec, str):
        return Rule(action, tool=spec, source=source, id=rid)
    args = spec.get("args") or {}
    return Rule(
        action,
        tool=str(spec.get("tool", "*")),
        args=tuple((str(k), str(v)) for k, v in args.items()),
        agent=spec.get("agent"),
        source=source,
        id=rid,
    )


def suggest_grant(tool: str, args: Mapping[str, Any]) -> dict[str, str]:
    """Argument globs for "allow calls like this one": the folder of a path, a command's verb.

    `src/app/models.py` → `src/app/**`; `python -m pytest -q tests` → `python -m pytest*`;
    `cat notes/a.txt` → `cat *` (relative paths inside the workspace only).
    """
    out: dict[str, str] = {}
    for name, value in args.items():
        if not isinstance(value, str):
            continue
        if name in PATH_ARGS:
            path = _norm_path(value)
            folder = posixpath.dirname(path)
            # A file at the top: that file; deeper: its folder.
            out[name] = f"{folder}/**" if folder and folder != "." else escape_glob(path)
        elif name in COMMAND_ARGS:
            line = value.strip()
            parsed = read_shell(value)
            words = line.split() if len(parsed.written) == 1 and not parsed.opaque else []
            keep = next(
                (n for prefix, n in _RUNNERS.items() if tuple(words[: len(prefix)]) == prefix), 0
            )
            if keep and words[0] in READERS:
                # `cat *`, not `cat*` (which covers `catchsegv rm -rf x`); the files it may
                # name stay inside the workspace (see READERS), so this never covers
                # `cat /proc/$PPID/environ` or `cat ../../../etc/shadow`.
                out[name] = f"{words[0]} *" if len(words) > 1 else escape_glob(line)
            elif keep and len(words) >= keep:
                out[name] = " ".join(words[:keep]) + "*"
            else:
                # Anything else: exactly this line. A reading command naming files outside
                # the workspace, or a line tower cannot see through, is never covered by a
                # grant (the human's approval still runs the call in front of them).
                out[name] = escape_glob(line)
    return out
