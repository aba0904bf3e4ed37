"""While a large project is still being fed, a task spawned by hand takes a number after
the planned copies (tasks.planned_id with next_copy: the service's rule and a view's
preview of it are the same function)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import write_project
from tower.core.project import load_project
from tower.core.tasks import next_copy, planned_id

TOML = """
[project]
name = "n"

[[agents]]
name = "a"
cascade = ["sim/instant"]

[[tasks]]
id = "bulk"
agent = "a"
prompt = "item {n}"
repeat = 5000

[[tasks]]
id = "digest"
agent = "a"
prompt = "once"
"""


def test_planned_ids_are_the_copies_of_the_project(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path / "p", TOML, {}))
    assert planned_id(project, "bulk-1") and planned_id(project, "bulk-5000")
    assert not planned_id(project, "bulk-5001") and not planned_id(project, "bulk-0")
    assert planned_id(project, "digest") and not planned_id(project, "digest-2")
    assert not planned_id(project, "other-3")


def test_a_copy_by_hand_skips_the_numbers_the_feed_will_spawn(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path / "p", TOML, {}))
    spawned = {f"bulk-{n}" for n in range(1, 1001)}  # the first batch only
    feeding = lambda t: t in spawned or planned_id(project, t)  # noqa: E731
    assert next_copy(project, "bulk", feeding).thread_id == "bulk-5001"
    assert next_copy(project, "digest", feeding).thread_id == "digest-2"
    # Once fed whole (or for a small project), the first free number as before.
    assert next_copy(project, "bulk", lambda t: t in spawned).thread_id == "bulk-1001"
