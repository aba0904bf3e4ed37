"""What counts as a secret: environment names that say so, and the shapes of common API keys.

The bus redacts these from every event, and the shell tool strips them from the environment
it hands to commands, so neither the log nor an agent ever sees a provider key.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

_SECRET_NAME = re.compile(
    # AUTH only as a word: not GIT_AUTHOR_EMAIL, XAUTHORITY or SSH_AUTH_SOCK (a socket path).
    r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|AUTHORIZATION"
    r"|(^|_)AUTH($|_(?!SOCK))|(^|_)PAT$",
    re.IGNORECASE,
)
# Provider settings litellm reads that carry access without saying so in their names.
PROVIDER_SECRETS = frozenset({"AZURE_AD_TOKEN_PROVIDER", "VERTEXAI_CREDENTIALS", "CLARIFAI_PAT"})
_MIN_SECRET_LEN = 8

# Key shapes worth redacting even when they did not come from our environment (a key an agent
# read from a file, or one a tool printed).
KEY_SHAPES = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35})"
)


# Names a project declared as carrying a key (`api_key_env`), whatever they look like.
# Process-wide: once a name was a key, its value stays out of logs and shells for good.
_DECLARED: set[str] = set()


def declare_secret_names(names: Iterable[str]) -> None:
    """Marks these environment variables as secret although their names do not say so."""
    _DECLARED.update(n for n in names if n)


def project_secret_names(project: Any) -> list[str]:
    """The `api_key_env` names of a project's `[models."…"]` tables."""
    models = getattr(project, "models", None) or {}
    return sorted({ms.api_key_env for ms in models.values() if getattr(ms, "api_key_env", None)})


def secrets_for_project(project: Any, env: dict[str, str] | None = None) -> dict[str, str]:
    """The bus's secrets for a project: secret-looking names plus every `api_key_env`."""
    declare_secret_names(project_secret_names(project))
    hide_from_proc_environ()
    return secrets_from_env(env)


# A stream may end on the first characters of a key shape; hold them for the next delta.
_SHAPE_START = re.compile(
    r"\b(?:sk?|sk-[A-Za-z0-9_\-]*"
    r"|A|AK|AKI|AKIA[0-9A-Z]*"
    r"|gh?|gh[pousr]|gh[pousr]_[A-Za-z0-9]*"
    r"|xo?|xox|xox[abprs]|xox[abprs]-[A-Za-z0-9\-]*"
    r"|AIz?|AIza[0-9A-Za-z_\-]*)\Z"
)
# Fragments of a key up to this long may show (a key cut after its first characters).
FRAGMENT_OK = 3


def safe_stream_cut(text: str, secrets: dict[str, str]) -> int:
    """How much of streamed text can be released now: everything before what may be the
    start of a secret that the next delta completes (an overlap of at most the longest
    secret's length - 1, more only for a key shape still growing at the end)."""
    n = cut = len(text)
    for value in secrets:
        # The longest end of text that a secret starts with (shorter than the secret).
        i = text.find(value[0], max(0, n - len(value) + 1)) if value else -1
        while i != -1:
            if value.startswith(text[i:]):
                cut = min(cut, i)
                break
            i = text.find(value[0], i + 1)
    moved = True
    while moved:  # never cut through a whole secret or key: hold it entire
        moved = False
        for value in secrets:
            i = text.find(value, max(0, cut - len(value) + 1))
            if -1 < i < cut < i + len(value):
                cut, moved = i, True
        # A key shape is one run of its characters: only runs at the cut or the end matter.
        for m in KEY_SHAPES.finditer(text, _run_start(text, min(cut, _run_start(text, n)))):
            if m.start() < cut and (m.end() > cut or m.end() == n):
                cut, moved = m.start(), True
    start = _SHAPE_START.search(text, _run_start(text, n))
    if start is not None and start.start() < cut:
        cut = start.start()
    return cut


_SHAPE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _run_start(text: str, i: int) -> int:
    """Where the run of key-shape characters that ends at i starts."""
    while i > 0 and text[i - 1] in _SHAPE_CHARS:
        i -= 1
    return i


def redact_partial_tail(text: str, secrets: dict[str, str]) -> str:
    """Text that ends on more than FRAGMENT_OK first characters of a secret (a reply cut
    off inside a key) ends with a redaction mark instead."""
    for value, name in secrets.items():
        for k in range(min(len(value) - 1, len(text)), FRAGMENT_OK, -1):
            if text.endswith(value[:k]):
                return text[:-k] + f"[redacted {name}]"
    return text


def redact_text(text: str, secrets: dict[str, str] | None = None) -> str:
    """Every secret (and key shape) in text replaced by a mark naming it."""
    for value, name in (secrets_from_env() if secrets is None else secrets).items():
        if value in text:
            text = text.replace(value, f"[redacted {name}]")
    return KEY_SHAPES.sub("[redacted key]", text)


class _RedactingFilter(logging.Filter):
    """Keeps secrets out of tower.log: messages and tracebacks are redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            clean = redact_text(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact_text(record.exc_text)
        except Exception:  # a log line must never break the caller
            pass
        return True


def install_log_redaction() -> None:
    """Adds the redacting filter to every handler of the root logger (once each)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) or name in PROVIDER_SECRETS or name in _DECLARED


def secrets_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Values of environment variables whose names say they are secret, longest first."""
    env = dict(os.environ) if env is None else env
    found = {
        value: name
        for name, value in env.items()
        if is_secret_name(name) and len(value) >= _MIN_SECRET_LEN
    }
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def scrubbed_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a command an agent runs: everything but the secrets."""
    env = dict(os.environ) if env is None else env
    return {k: v for k, v in env.items() if not is_secret_name(k)}


def hide_from_proc_environ() -> list[str]:
    """Blanks secret values in this process's initial environment block, the bytes that
    `/proc/<tower's pid>/environ` shows to any process of the same user (a command an agent
    runs reads `/proc/$PPID/environ`). `os.environ` and the C `environ` keep every value
    (each is moved to a fresh copy first), so litellm and child processes still see them.

    Returns the names blanked. Linux only; elsewhere (or if anything is odd) does nothing.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # Fields 50 and 51 (1-based, counting pid and comm) are env_start and env_end.
        start, end = int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return []
    if not 0 < start < end or end - start > 1 << 24:
        return []
    hidden: list[str] = []
    try:
        block = ctypes.string_at(start, end - start)
    except (OSError, ValueError):
        return []
    pos = 0
    for entry in block.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        here, pos = pos, pos + len(entry) + 1
        if not eq or not value or not value.strip(b"*"):  # nothing there, or blanked already
            continue
        key = name.decode("utf-8", "surrogateescape")
        if not is_secret_name(key):
            continue
        current = os.environ.get(key)
        if current is not None:
            # Re-set it: the C library copies it to the heap, so the block is no longer used.
            os.environ[key] = current
        offset = here + len(name) + 1
        ctypes.memset(start + offset, ord("*"), len(value))
        hidden.append(key)
    return hidden
