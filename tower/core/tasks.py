"""A project's tasks as threads: the copies a task expands to, and the way back.

Pure functions of the project: a thread's task reference ("review", "review-2",
"screen-4") maps back to its task and copy number; a task (or copy n of a repeated one)
maps to what its thread is spawned with, {n} filled. Starting, resuming and the spawn dialog
all go through them, so a resumed thread gets the very settings it was spawned with.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tower.core.items import fill_item, item_at, read_items
from tower.core.project import (
    AFTER_REF,
    Project,
    TaskSettings,
    after_tasks,
    copy_ids,
    items_path,
)
from tower.core.run import CommandError, TaskCopy, ThreadRun, fill
from tower.core.state import TowerState, root_of


def task_of(project: Project, task_id: str) -> tuple[TaskSettings, int | None] | None:
    """The project task a thread came from, and its copy number if repeated.

    `task_id` is the thread's task reference: a task's id ("review", also for its spawned
    copies review-2, review-3...), or a repeated task's copy ("screen-4", any number).
    A task whose id is exactly `task_id` wins over a suffix match.
    """
    for task in project.tasks:
        if task.id == task_id:
            return task, None
    base, _, n = task_id.rpartition("-")
    if base and n.isdigit():
        for task in project.tasks:
            if task.id == base:
                return task, (int(n) if task.repeat > 1 else None)
    return None


def item_of(project: Project, task: TaskSettings, n: int | None) -> dict[str, str] | None:
    """Copy n's item, for a task with an items file (None otherwise, or past its end)."""
    path = items_path(project, task)
    if path is None or (n or 1) > task.repeat:
        return None
    return item_at(path, n or 1)


def script_of(task: TaskSettings, n: int | None) -> list[dict[str, Any]] | None:
    """A task's sim script for copy n, {n} filled (None: the task has none)."""
    return [fill(step.model_dump(exclude_none=True), n) for step in task.script] or None


def task_copy(
    project: Project,
    task: TaskSettings,
    n: int | None,
    tid: str | None = None,
    item: dict[str, str] | None = None,
) -> TaskCopy:
    """A task's settings for copy n (None: not repeated), {n} filled, and with an items
    file, item n's {field}s (`item`: already read, as the feed does; else read here)."""
    b = project.budget
    if item is None and tid is None:
        item = item_of(project, task, n)
    return TaskCopy(
        task=task,
        n=n,
        thread_id=tid or (task.id if n is None else f"{task.id}-{n}"),
        prompt=fill_item(fill(task.prompt, n), item),
        title=fill_item(fill(task.title, n), item) or None,
        script=fill_item(script_of(task, n), item),
        answer=fill_item(fill(task.answer, n), item),
        budget_usd=task.budget_usd if task.budget_usd is not None else b.thread_usd,
    )


def planned_copies(project: Project) -> Iterator[TaskCopy]:
    """Every thread the project's tasks expand to (`repeat` copies numbered), made one at a
    time as they are asked for: a million queued copies are a counter, not a million
    objects. In project order; when the project is fed lazily (more copies than
    FEED_AHEAD), higher-priority tasks come first, so priority still decides who starts."""
    tasks = list(project.tasks)
    if planned_count(project) > FEED_AHEAD:
        tasks.sort(key=lambda t: -t.priority)  # stable: project order within a priority
    for task in tasks:
        path = items_path(project, task)
        if path is not None:  # read in step with the feed: one line held at a time
            for k, item in enumerate(read_items(path), 1):
                yield task_copy(project, task, None if task.repeat == 1 else k, item=item)
            continue
        copies = [None] if task.repeat == 1 else range(1, task.repeat + 1)
        for n in copies:
            yield task_copy(project, task, n)


# A project's task copies spawned ahead of the free slots: up to this many (or twice
# max_concurrent, if more) wait in the queue as threads; the rest are spawned as slots free.
FEED_AHEAD = 1000


def planned_count(project: Project) -> int:
    """How many threads the project's tasks make (`repeat` included)."""
    return sum(t.repeat for t in project.tasks)


def dependencies(project: Project, task: TaskSettings) -> list[str]:
    """The threads a task of a graph waits for: every copy of every task its `after` names."""
    named = {t for found in after_tasks(project, task).values() for t in found} - {task.id}
    return [c for t in project.tasks if t.id in named for c in copy_ids(t)]


def fill_after(prompt: str, project: Project, answers: dict[str, str | None]) -> str:
    """A dependent task's prompt with its dependencies' answers: `{after.ID.answer}` (ID a
    copy, or a task: all its copies' answers, one a line) and `{after.answers}` (every
    dependency's, one a line, "- id: answer")."""

    def one(tid: str) -> str:
        return (answers.get(tid) or "(no answer)").strip()

    def named(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref in answers:
            return one(ref)
        task = project.task(ref)
        return "\n".join(f"- {c}: {one(c)}" for c in copy_ids(task) if c in answers)

    prompt = AFTER_REF.sub(named, prompt)
    return prompt.replace("{after.answers}", "\n".join(f"- {t}: {one(t)}" for t in answers))


def planned_id(project: Project, tid: str) -> bool:
    """Whether `tid` is one of the project's planned task copies (`review`, `screen-4` of a
    repeat of at least 4): while the project is still being fed, a task spawned by hand
    must not take one of these numbers."""
    found = task_of(project, tid)
    if found is None:
        return False
    task, n = found
    return tid == task.id if n is None else 1 <= n <= task.repeat


def next_copy(project: Project, task_id: str, taken: Callable[[str], bool]) -> TaskCopy:
    """What spawning `task_id` once more would start: the first free id of the task's
    pattern ("review", then review-2, review-3...; screen-1, screen-2... if repeated)."""
    try:
        task = project.task(task_id)
    except KeyError:
        raise CommandError(f"no task {task_id!r} in the project") from None
    if task.repeat > 1:
        n = next(k for k in itertools.count(1) if not taken(f"{task.id}-{k}"))
        return task_copy(project, task, n)
    tid = task.id
    for k in itertools.count(2):
        if not taken(tid):
            break
        tid = f"{task.id}-{k}"
    return task_copy(project, task, None, tid)


def thread_folders(
    project: Project,
    state: TowerState,
    tid: str,
    copies: Path | None,
    session: str,
    run: ThreadRun | None = None,
) -> tuple[Path | None, Path | None]:
    """(a thread's workspace, the original folder it was copied from); either may be None.

    The supervisor's rule: `<copies>/<session>/<thread>` unless the project works in place
    (copy_workspaces = false); a sub-agent works in its tree's root's folder. `run`: the
    root's live run when there is one (its folder and source are known exactly); otherwise
    (an ended thread, a view of a fleet elsewhere) its task says where."""
    tid = root_of(state, tid)
    if run is not None:
        src = run.workspace_src
    else:
        view = state.threads.get(tid)
        found = task_of(project, view.task) if view is not None else None
        src = project.root / found[0].workspace if found and found[0].workspace else None
    if run is not None and run.workspace is not None:
        return run.workspace.root, src
    if src is not None and not project.project.copy_workspaces:
        return src, src
    if copies is not None:
        return copies / session / tid, src
    return src, src
