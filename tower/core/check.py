"""A task's self-check: does the thread's answer (and its workspace) pass the project's test?

A failed check is what escalates a thread to its cascade's next model, and what an
experiment counts as a failure, so it is judged the same way everywhere: here.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tower.core.tools.files import ToolError, Workspace
from tower.core.tools.shell import run_shell

if TYPE_CHECKING:
    from tower.core.project import CheckSettings

# The message a model gets when its answer failed: the sim models read this prefix too.
CHECK_FAILED = "Your answer did not pass the task's check"


@dataclass(frozen=True, slots=True)
class CheckResult:
    passed: bool
    detail: str


def _missing(text: str, wanted: list[str]) -> list[str]:
    return [w for w in wanted if w not in text]


async def run_check(check: CheckSettings, answer: str, workspace: Path | None) -> CheckResult:
    """Every criterion the check names must hold; the detail says the first that did not."""
    missing = _missing(answer, check.answer_contains)
    if missing:
        return CheckResult(False, f"the answer does not contain {missing[0]!r}")
    if check.answer_matches is not None and not re.search(check.answer_matches, answer):
        return CheckResult(False, f"the answer does not match /{check.answer_matches}/")
    if check.file is not None:
        if workspace is None:
            return CheckResult(False, "no workspace to look for the file in")
        try:
            text = await Workspace(workspace).run("read_file", {"path": check.file})
        except ToolError as exc:
            return CheckResult(False, f"{check.file}: {exc}")
        missing = _missing(text, check.file_contains)
        if missing:
            return CheckResult(False, f"{check.file} does not contain {missing[0]!r}")
    if check.command is not None:
        if workspace is None:
            return CheckResult(False, "no workspace to run the check command in")
        out = await run_shell(
            check.command, workspace, timeout_s=check.timeout_s, max_output_bytes=8_000
        )
        head = out.split("\n", 1)[0]
        if not head.startswith("exit status 0 "):
            tail = out.strip().splitlines()[-1][:200] if out.strip() else ""
            return CheckResult(False, f"`{check.command}`: {head}; {tail}")
    return CheckResult(True, "passed")


async def check_answer(
    check: CheckSettings | None, answer: str, workspace: Path | None
) -> CheckResult | None:
    """None when the task has no check; a check that crashes counts as failed, not as a hang."""
    if check is None:
        return None
    try:
        return await asyncio.wait_for(run_check(check, answer, workspace), check.timeout_s + 5)
    except TimeoutError:
        return CheckResult(False, f"the check took longer than {check.timeout_s:g} s")
    except OSError as exc:
        return CheckResult(False, f"the check could not run: {exc}")
