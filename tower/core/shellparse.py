"""A shell line read the way `/bin/sh -c` will run it, for the policy (tower/core/policy.py).

bashlex (a port of bash's own grammar) parses the line; the walk collects every simple
command — through pipelines, lists, `( )`/`{ }`, if/while/until/for, command and process
substitutions, redirections and here-strings — looks through wrappers whose options it
knows (`sudo -u root`, `nice -n 5`, `timeout 5`, `command -p`, `env X=1`, `sh -c '…'` with
a literal string), and marks the line **opaque** wherever it cannot see what will run:
eval, source, functions, xargs, find -exec, a computed command name, `${IFS}`, `case`, an
unparsed substitution, a parse error. The policy treats an opaque line as matching every
deny and ask rule and never allows it. Pure: no I/O.
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass

import bashlex
from bashlex.ast import node as Node

# bashlex ships no types. A Node carries attributes that depend on its kind: every node has
# `kind` and `pos` (its span), a command or a word `parts`, a redirect `type` and `output`, …
# The walk reads them as such; a shape it does not know (AttributeError) makes the line opaque.

MAX_LEN = 100_000  # longer lines are not parsed: opaque
MAX_DEPTH = 4  # sh -c 'sh -c "…"' nesting read through
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Variables that change how the shell reads or runs what follows (word splitting, a file
# bash runs first, xtrace prompts that expand `$(…)`, exported functions).
_RISKY_VARS = re.compile(
    r"(?<![A-Za-z0-9_])(?:IFS|BASH_ENV|PS4|SHELLOPTS|BASHOPTS|PROMPT_COMMAND)(?![A-Za-z0-9_])"
    r"|BASH_FUNC_"
)
# `<<'EOF'`, `<<"EOF"`, `<<\EOF`: bashlex cannot parse a quoted delimiter, so it is read as a
# plain one of the same length (positions stay the same) and its body counts as literal.
_QUOTED_HEREDOC = re.compile(r"<<(-?)([ \t]*)(?:(['\"])(\w+)\3|\\(\w+))")
# Characters that make a command name computed, not literal (`[` alone is the test command).
_COMPUTED = re.compile(r"[$`*?\[\]{}()]")

# Programs that run a command tower cannot read from the line: a string (eval, trap), a
# file (source), stdin (xargs, parallel), or their own argument list with options tower does
# not parse. Their line is opaque.
OPAQUE_PROGRAMS = frozenset(
    {
        "eval", "source", ".", "alias", "trap", "fc", "enable", "hash", "let", "mapfile",
        "readarray", "coproc", "xargs", "parallel", "watch", "script", "su", "sg", "runuser",
        "pkexec", "chroot", "flock", "taskset", "chrt", "unshare", "nsenter", "setpriv",
        "prlimit", "cgexec", "systemd-run", "strace", "ltrace", "valgrind", "catchsegv",
        "expect", "fakeroot", "proot", "firejail", "bwrap", "torsocks", "proxychains",
        "proxychains4", "xvfb-run", "dbus-run-session", "sshpass", "unbuffer", "rlwrap",
        "entr", "at", "batch", "eatmydata", "nocache", "run-parts", "start-stop-daemon",
        "daemonize", "tsp",
    }
)  # fmt: skip
SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "oksh", "ash", "yash",
     "posh", "rbash", "fish", "csh", "tcsh"}
)  # fmt: skip
# find/fd options that run a command per file.
_EXEC_OPTIONS = frozenset(
    {"-exec", "-execdir", "-ok", "-okdir", "-x", "-X", "--exec", "--exec-batch"}
)
# Wrappers looked through: (options without a value, options taking one, positional
# arguments before the command). Any other option makes the line opaque.
_WRAPPERS: dict[str, tuple[frozenset[str], frozenset[str], int]] = {
    "sudo": (
        frozenset({"-E", "-H", "-n", "-P", "-S", "-b", "-k", "-A", "-B", "--preserve-env",
                   "--non-interactive", "--set-home", "--stdin", "--background"}),
        frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T", "--user",
                   "--group", "--chdir", "--prompt", "--host", "--close-from", "--role",
                   "--type", "--other-user", "--command-timeout"}),
        0,
    ),
    "doas": (frozenset({"-n"}), frozenset({"-u", "-C"}), 0),
    "nohup": (frozenset(), frozenset(), 0),
    "nice": (frozenset(), frozenset({"-n", "--adjustment"}), 0),
    "timeout": (
        frozenset({"--foreground", "--preserve-status", "-v", "--verbose", "-f", "-p"}),
        frozenset({"-s", "-k", "--signal", "--kill-after"}),
        1,
    ),
    "stdbuf": (frozenset(), frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), 0),
    "ionice": (frozenset({"-t", "--ignore"}), frozenset({"-c", "-n", "--class", "--classdata"}), 0),
    "setsid": (frozenset({"-c", "-f", "-w", "--ctty", "--fork", "--wait"}), frozenset(), 0),
    "command": (frozenset({"-p"}), frozenset(), 0),
    "builtin": (frozenset(), frozenset(), 0),
    "exec": (frozenset({"-c", "-l"}), frozenset({"-a"}), 0),
    "env": (
        frozenset({"-i", "--ignore-environment", "-0", "--null", "-v", "--debug", "-"}),
        frozenset({"-u", "--unset", "-C", "--chdir"}),
        0,
    ),
    "time": (
        frozenset({"-p", "-v", "--verbose", "-q", "--quiet", "-a", "--append", "--portability"}),
        frozenset({"-f", "-o", "--format", "--output"}),
        0,
    ),
    "busybox": (frozenset(), frozenset(), 0),
}  # fmt: skip
# Shell options that take a value, and flags that keep `sh -c STRING` meaning "run STRING".
_SHELL_VALUED = frozenset({"-o", "+o", "-O", "+O"})
_SHELL_LONG = frozenset({"--norc", "--noprofile", "--posix", "--login", "--noediting"})
_SHELL_FLAGS = re.compile(r"[-+][abefhkmnptuvxBCEHPTlc]+")


@dataclass(frozen=True, slots=True)
class Piece:
    """One simple command: `plain` as it will run (quotes gone, program by its base name),
    `words` the same split, and `sources` each word as written (to tell `$x` from `'$x'`)."""

    plain: str
    words: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShellLine:
    """What a shell line runs, as far as a parser can tell."""

    pieces: tuple[Piece, ...] = ()  # every simple command, nested and wrapped ones included
    written: tuple[str, ...] = ()  # the line's simple commands exactly as written
    opaque: str = ""  # why tower cannot see what runs ("" when it can)
    substitution: bool = False  # has $(…), `…`, <(…) or >(…)
    unsafe_redirect: bool = False  # reads or writes a file (not 2>&1 or >/dev/null)

    @property
    def plain(self) -> list[str]:
        return [p.plain for p in self.pieces if p.plain]


def unquote(src: str) -> str:
    """A word as the shell passes it on: quotes and backslashes removed (no expansion)."""
    out: list[str] = []
    quote = ""
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                out.append(c)
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                if src[i + 1] != "\n":
                    out.append(src[i + 1])
                i += 1
            else:
                out.append(c)
        elif c == "\\":
            if i + 1 < n and src[i + 1] != "\n":
                out.append(src[i + 1])
            i += 1
        elif c in "'\"":
            quote = c
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _children(node: Node) -> list[Node]:
    out: list[Node] = []
    for value in vars(node).values():
        if isinstance(value, bashlex.ast.node):
            out.append(value)
        elif isinstance(value, list):
            out += [v for v in value if isinstance(v, bashlex.ast.node)]
    return out


class _Walk:
    def __init__(self, text: str, depth: int, quoted_heredocs: set[int]) -> None:
        self.text = text
        self.depth = depth
        self.quoted_heredocs = quoted_heredocs
        self.pieces: list[Piece] = []
        self.written: list[str] = []
        self.opaque = ""
        self.substitution = False
        self.unsafe_redirect = False
        self.subst_starts: set[int] = set()
        self.heredoc_spans: list[tuple[int, int]] = []

    def fail(self, why: str) -> None:
        if not self.opaque:
            self.opaque = why

    def src(self, node: Node) -> str:
        start, end = node.pos
        return self.text[start:end]

    def visit(self, node: Node) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node)
            return
        if kind == "function":
            self.fail("it defines a shell function (what a call of it runs is not visible)")
        elif kind in ("commandsubstitution", "processsubstitution"):
            self.substitution = True
            self.subst_starts.add(node.pos[0])
        elif kind == "parameter":
            value = str(getattr(node, "value", "") or "")
            if "$(" in value or "`" in value or "$[" in value or "<(" in value:
                self.fail("a parameter expansion holds a command substitution")
            if "IFS" in value:
                self.fail("it expands IFS")
        elif kind == "redirect":
            self.redirect(node)
        for child in _children(node):
            self.visit(child)

    def redirect(self, node: Node) -> None:
        rtype = node.type
        output = getattr(node, "output", None)
        heredoc = getattr(node, "heredoc", None)
        if heredoc is not None:
            self.heredoc_spans.append(heredoc.pos)
            quoted = output is not None and output.pos[0] in self.quoted_heredocs
            body = str(getattr(heredoc, "value", ""))
            if not quoted and ("$(" in body or "`" in body or "$[" in body):
                self.fail("a here-document runs a command substitution")
        harmless = (rtype in (">&", "<&") and isinstance(output, int)) or (
            rtype in (">", ">>", "&>", ">|")
            and output is not None
            and not isinstance(output, int)
            and unquote(self.src(output)) == "/dev/null"
        )
        if not harmless:
            self.unsafe_redirect = True

    def command(self, node: Node) -> None:
        if self.depth == 0:
            self.written.append(self.src(node).strip())
        words: list[Node] = []
        for part in node.parts:
            if part.kind == "word":
                words.append(part)
            self.visit(part) if part.kind != "command" else self.command(part)
        items = [(self.src(w), w) for w in words]
        self.resolve(items)

    def resolve(self, items: list[tuple[str, Node]]) -> None:
        # bashlex reads `A=1 >x B=2 rm` as running `B=2`: the shell runs `rm`.
        while items and _ASSIGN.match(items[0][0]):
            items = items[1:]
        for _ in range(16):
            if not items:
                return
            self.add(items)
            src, node = items[0]
            parts = [p for p in getattr(node, "parts", []) if p.kind != "tilde"]
            if src != "[" and (parts or _COMPUTED.search(src)):
                self.fail(f"the command name {src!r} is computed when the line runs")
                return
            prog = posixpath.basename(unquote(src))
            rest = items[1:]
            if prog in OPAQUE_PROGRAMS:
                self.fail(f"`{prog}` runs a command tower cannot see")
                return
            if prog in SHELLS:
                self.shell(prog, rest)
                return
            if prog in ("find", "fd", "fdfind") and any(
                unquote(s) in _EXEC_OPTIONS for s, _ in rest
            ):
                self.fail(f"`{prog}` runs a command for each file it finds")
                return
            if prog not in _WRAPPERS:
                return
            inner = self.unwrap(prog, rest)
            if inner is None:
                self.fail(f"`{prog}` is given an option tower does not know")
                return
            items = inner
        self.fail("too many wrappers")

    def add(self, items: list[tuple[str, Node]]) -> None:
        words = [unquote(s) for s, _ in items]
        words[0] = posixpath.basename(words[0])
        self.pieces.append(Piece(" ".join(words), tuple(words), tuple(s for s, _ in items)))

    def unwrap(self, prog: str, rest: list[tuple[str, Node]]) -> list[tuple[str, Node]] | None:
        flags, valued, positional = _WRAPPERS[prog]
        i = 0
        while i < len(rest):
            word = unquote(rest[i][0])
            if word == "--":
                i += 1
                break
            if not word.startswith("-") or (word == "-" and "-" not in flags):
                break
            if prog == "command" and not word.startswith("--") and set(word[1:]) & {"v", "V"}:
                return []  # `command -v x` looks x up; it runs nothing
            if prog in ("env", "sudo") and word.startswith(("-S", "--split-string")):
                return None
            if word in flags:
                i += 1
            elif word in valued:
                i += 2
            elif word.startswith("--") and word.split("=", 1)[0] in valued and "=" in word:
                i += 1
            elif not word.startswith("--") and word[:2] in valued:
                i += 1  # `-n5`, `-oL`
            elif not word.startswith("--") and all(f"-{c}" in flags for c in word[1:]):
                i += 1  # `-pE`
            elif prog == "nice" and word[1:].isdigit():
                i += 1  # `nice -5`
            else:
                return None
        inner = rest[i:]
        if positional:
            inner = inner[positional:]
        if prog in ("env", "sudo", "doas"):
            while inner and _ASSIGN.match(unquote(inner[0][0])):
                inner = inner[1:]
        return inner

    def shell(self, prog: str, rest: list[tuple[str, Node]]) -> None:
        i, run_string = 0, False
        while i < len(rest):
            word = unquote(rest[i][0])
            if word in ("--", "-"):
                i += 1  # end of options: the next word is the command string
                break
            if word in _SHELL_VALUED:
                i += 2
            elif word in _SHELL_LONG:
                i += 1
            elif _SHELL_FLAGS.fullmatch(word):
                run_string = run_string or (word[0] == "-" and "c" in word)
                i += 1
            else:
                break
        if not run_string or i >= len(rest):
            self.fail(f"`{prog}` reads its commands from a file or its input")
            return
        src, node = rest[i]
        if [p for p in getattr(node, "parts", []) if p.kind != "tilde"] or re.search(r"[$`]", src):
            self.fail(f"`{prog} -c` is given a command computed when the line runs")
            return
        if self.depth + 1 > MAX_DEPTH:
            self.fail("shells nested too deep")
            return
        inner = _read(unquote(src), self.depth + 1)
        self.pieces += inner.pieces
        self.substitution = self.substitution or inner.substitution
        self.unsafe_redirect = self.unsafe_redirect or inner.unsafe_redirect
        if inner.opaque:
            self.fail(inner.opaque)


def _unparsed_substitution(text: str, starts: set[int], skip: list[tuple[int, int]]) -> bool:
    """True if the text holds a `$(`, backtick, `<(` or `>(` outside single quotes that the
    parser did not read as a substitution (a second net under bashlex)."""
    i, n = 0, len(text)
    squote = dquote = False
    while i < n:
        span = next((s for s in skip if s[0] <= i < s[1]), None)
        if span is not None:
            i = span[1]
            continue
        c = text[i]
        if squote:
            squote = c != "'"
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if c == "'" and not dquote:
            squote = True
        elif c == '"':
            dquote = not dquote
        elif c == "#" and not dquote and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == "`":
            if i not in starts:
                return True
            j = i + 1
            while j < n and text[j] != "`":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        elif text[i : i + 2] in ("$(", "$[") or (not dquote and text[i : i + 2] in ("<(", ">(")):
            if i not in starts:
                return True
            i += 2
            continue
        i += 1
    return False


def _ansi_quoting(text: str) -> bool:
    """`$'…'` or `$"…"` outside quotes (bashlex reads `$'\\x72m'` as a parameter)."""
    squote = dquote = False
    i = 0
    while i < len(text):
        c = text[i]
        if squote:
            squote = c != "'"
        elif c == "\\":
            i += 1
        elif c == "'" and not dquote:
            squote = True
        elif c == '"':
            dquote = not dquote
        elif c == "$" and not dquote and text[i + 1 : i + 2] in ("'", '"'):
            return True
        i += 1
    return False


def _read(text: str, depth: int) -> ShellLine:
    if not text.strip():
        return ShellLine()
    if len(text) > MAX_LEN:
        return ShellLine(opaque="the line is too long to read")
    if _ansi_quoting(text):
        return ShellLine(opaque="it uses $'…' or $\"…\" quoting")
    risky = _RISKY_VARS.search(text)
    if risky:
        return ShellLine(opaque=f"it mentions {risky.group()} (changes how the shell reads it)")
    quoted: set[int] = set()

    def plain_delimiter(m: re.Match[str]) -> str:
        name = m.group(4) or m.group(5)
        start = m.start() + 2 + len(m.group(1)) + len(m.group(2)) + 1
        quoted.add(start)
        pad = " " if m.group(4) else ""
        return f"<<{m.group(1)}{m.group(2)} {name}{pad}"

    parsed_text = _QUOTED_HEREDOC.sub(plain_delimiter, text)
    try:
        nodes = bashlex.parse(parsed_text)
    except Exception as exc:  # bashlex: ParsingError, or "not implemented" for case, $((…)), …
        why = str(exc).split(" (position")[0] or type(exc).__name__
        return ShellLine(opaque=f"the parser cannot read it ({why})")
    walk = _Walk(text, depth, quoted)
    try:
        for node in nodes:
            walk.visit(node)
    except Exception as exc:  # a node shape this walk does not know
        return ShellLine(opaque=f"the parser cannot read it ({type(exc).__name__})")
    if not walk.opaque and _unparsed_substitution(
        parsed_text, walk.subst_starts, walk.heredoc_spans
    ):
        walk.fail("it has a substitution the parser did not read")
    return ShellLine(
        pieces=tuple(walk.pieces),
        written=tuple(w for w in walk.written if w),
        opaque=walk.opaque,
        substitution=walk.substitution,
        unsafe_redirect=walk.unsafe_redirect,
    )


@functools.lru_cache(maxsize=4096)
def read_shell(text: str) -> ShellLine:
    """The simple commands of a shell line and whether tower can see through it."""
    return _read(text, 0)
