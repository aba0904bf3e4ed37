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


class Action(StrEnum):
    DENY = "deny"
    ASK = "ask"
    ALLOW = "allow"


# Read-only tools confined to the workspace: the only ones that run without asking by default.
READ_TOOLS = frozenset({"read_file", "list_dir", "search"})
# Talking to the human and ending the task are never gated.
UNGATED = frozenset({"ask_human", "finish"})
# Arguments holding a workspace path: matched after normalising, so `src/../x` is not `src/**`.
PATH_ARGS = frozenset({"path", "file", "folder", "directory", "repo_path"})
# Shell argument: deny/ask match any piece of a compound command; allow needs every piece.
COMMAND_ARGS = frozenset({"command", "cmd"})
_SPLIT = re.compile(r"&&|\|\||[;|&\n]")
_SUBST = ("`", "$(", "<(", ">(")
_INNER = re.compile(r"\$\(([^()]*)\)|`([^`]*)`|[<>]\(([^()]*)\)")
# Words that run the command after them: `sudo rm -rf /` is an `rm`.
_WRAPPERS = frozenset(
    {
        "sudo",
        "doas",
        "env",
        "command",
        "exec",
        "nohup",
        "time",
        "nice",
        "xargs",
        "timeout",
        "stdbuf",
        "ionice",
        "chroot",
        "setsid",
        "busybox",
        "builtin",
    }
)
# Shell words that come before a command: `if :; then rm -rf ~; fi` runs an `rm`.
_KEYWORDS = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "(", "time"})
# Wrapper options that take a value: `nice -n 5 rm`, `sudo -u root rm`, `timeout -s 9 5 rm`.
_VALUED = frozenset({"-n", "-u", "-g", "-s", "-k", "-C", "-p", "-c", "--signal", "--user"})
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Redirections that cannot write anywhere: everything else needs an exact grant.
_HARMLESS_REDIRECT = re.compile(r"\s*(?:[0-9]?>&[0-9]|[0-9]?>\s*/dev/null)(?=\s|$)")
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
        return True

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
            return f"rule {self.rule.describe()} ({self.rule.source})"
        return self.why


def _norm_path(value: str) -> str:
    path = posixpath.normpath(value.replace("\\", "/")) if value else "."
    return path.removeprefix("./")


def _plain(piece: str) -> str:
    """A simple command as it will run: quotes, backslashes, grouping, keywords and wrappers
    gone, and the program named by its base name.

    `\\rm -rf /`, `'rm' -rf /`, `(rm -rf /)`, `then rm -rf /`, `sudo -u root FOO=1 rm -rf /`,
    `nice -n 5 rm -rf /` and `/bin/rm -rf /` all read `rm -rf /`.
    """
    text = piece.replace("\\\n", " ").replace("\\", "").replace("'", "").replace('"', "")
    words = text.strip().lstrip("({").rstrip(")}").split()
    wrapped = False
    while words:
        word = words[0]
        if word in _KEYWORDS or word.strip("({") == "" or _ASSIGN.match(word):
            words.pop(0)
        elif word in _WRAPPERS or posixpath.basename(word) in _WRAPPERS:
            words.pop(0)
            wrapped = True
        elif wrapped and word.startswith("-"):
            words.pop(0)
            if word in _VALUED and words:
                words.pop(0)
        elif wrapped and word.replace(".", "", 1).rstrip("smhd").isdigit():
            words.pop(0)  # timeout's duration
        else:
            break
    if words:
        words[0] = posixpath.basename(words[0].lstrip("({"))
    return " ".join(words)


def command_pieces(command: str) -> list[str]:
    """The simple commands of a shell line, including those inside `$(…)` and backticks.

    `a && b; c | d` → a, b, c, d. A seatbelt for deny rules, not a shell parser: the
    default (ask) is what stands between a model and the shell.
    """
    inner = [next(g for g in m.groups() if g is not None) for m in _INNER.finditer(command)]
    pieces = []
    for line in (command, *inner):
        for raw in _SPLIT.split(line.replace("\\\n", " ")):
            plain = _plain(raw)
            if plain:
                pieces.append(plain)
    return pieces


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
        if every and _literal(glob):
            return text.strip() == _unglob(glob).strip()  # exactly this line, granted as is
        pieces = command_pieces(text)
        if every:
            # Allowing `pytest*` must not allow `pytest; rm -rf ~`, `pytest $(curl …)` or
            # `pytest > ~/.bashrc`.
            bare = _HARMLESS_REDIRECT.sub("", text)
            if any(s in text for s in _SUBST) or ">" in bare or "<" in bare or not pieces:
                return False
            # Pieces as written: `LD_PRELOAD=x pytest` or `sudo pytest` is not `pytest*`.
            raw = [p.strip() for p in _SPLIT.split(bare) if p.strip()]
            return all(fnmatch.fnmatchcase(p, glob) for p in raw)
        return fnmatch.fnmatchcase(text.strip(), glob) or any(
            fnmatch.fnmatchcase(p, glob) for p in pieces
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
    for rule in live:
        if rule.action is Action.DENY and rule.matches(tool, args, agent):
            return Verdict(Action.DENY, rule)
    for rule in grants:
        if rule.active(now) and rule.matches(tool, args, agent):
            return Verdict(Action.ALLOW, rule)
    for action in (Action.ASK, Action.ALLOW):
        for rule in live:
            if rule.action is action and rule.matches(tool, args, agent):
                return Verdict(action, rule)
    return default_verdict(tool)


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

    `src/app/models.py` → `src/app/**`; `python -m pytest -q tests` → `python -m pytest*`.
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
            pieces = [p.strip() for p in _SPLIT.split(line) if p.strip()]
            words = pieces[0].split() if len(pieces) == 1 else []
            keep = next(
                (n for prefix, n in _RUNNERS.items() if tuple(words[: len(prefix)]) == prefix), 0
            )
            if keep and len(words) >= keep:
                out[name] = " ".join(words[:keep]) + "*"
            else:
                out[name] = escape_glob(line)  # anything else: exactly this line
    return out
