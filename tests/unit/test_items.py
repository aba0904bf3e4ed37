"""A task's items from a JSONL or CSV file beside tower.toml (tower/core/items.py): one copy
per item, its fields filling the prompt; a bad file is one line naming it and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tower.core.project import ProjectError, load_project
from tower.core.tasks import planned_copies, planned_count, task_copy

TOML = """
[project]
name = "items"

[[agents]]
name = "a"
system_prompt = "Analyse."
cascade = ["sim/small"]

[[tasks]]
id = "job"
agent = "a"
prompt = "Household {name} earned {wages}. Copy {n}."
title = "{name}"
answer = "{name}: {wages}"
{extra}
"""


def project(tmp_path: Path, items: str, text: str | bytes, extra: str = "") -> Path:
    data = tmp_path / items
    data.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        data.write_bytes(text)
    else:
        data.write_text(text, encoding="utf-8")
    extra = f'items = "{items}"\n{extra}'
    (tmp_path / "tower.toml").write_text(TOML.replace("{extra}", extra), encoding="utf-8")
    return tmp_path


def test_each_jsonl_line_is_a_copy_with_its_fields_filled(tmp_path: Path) -> None:
    rows = [{"name": f"h{i}", "wages": 1000 + i} for i in range(1, 2501)]
    text = "\n".join(json.dumps(r) for r in rows[:10]) + "\n\n"  # a blank line is no item
    text += "\n".join(json.dumps(r) for r in rows[10:]) + "\n"
    p = load_project(project(tmp_path, "data/households.jsonl", text))
    assert planned_count(p) == 2500 and p.tasks[0].repeat == 2500
    copies = planned_copies(p)
    first = next(copies)
    assert (first.thread_id, first.prompt) == ("job-1", "Household h1 earned 1001. Copy 1.")
    assert (first.title, first.answer) == ("h1", "h1: 1001")
    rest = list(copies)
    assert [c.thread_id for c in rest][-1] == "job-2500"
    assert rest[-1].prompt == "Household h2500 earned 3500. Copy 2500."
    # A copy made on its own (a resume, the spawn dialog) reads its own item.
    again = task_copy(p, p.tasks[0], 1234)
    assert again.prompt == "Household h1234 earned 2234. Copy 1234."


def test_csv_rows_under_a_header_are_items(tmp_path: Path) -> None:
    text = 'name,wages\nh1,"58,420"\n"h ""two""",12\n'
    p = load_project(project(tmp_path, "h.csv", text))
    got = [c.prompt for c in planned_copies(p)]
    assert got == ["Household h1 earned 58,420. Copy 1.", 'Household h "two" earned 12. Copy 2.']


def test_one_item_is_one_thread_named_as_the_task(tmp_path: Path) -> None:
    p = load_project(project(tmp_path, "one.jsonl", '{"name": "solo", "wages": "9"}\n'))
    (only,) = list(planned_copies(p))
    assert (only.thread_id, only.title) == ("job", "solo")


@pytest.mark.parametrize(
    ("items", "text", "extra", "want"),
    [
        (
            "h.jsonl",
            '{"name": "a"}\n{"name": \n',
            "",
            "tasks[0].items: h.jsonl: line 2: not valid JSON",
        ),
        (
            "h.jsonl",
            '{"name": "a"}\n[1, 2]\n',
            "",
            "line 2: expected a JSON object with fields, found list",
        ),
        (
            "h.jsonl",
            "{}\n",
            "",
            "line 1: expected a JSON object with fields, found an empty object",
        ),
        ("h.jsonl", "null\n", "", "line 1: expected a JSON object with fields, found null"),
        ("h.csv", "name,wages\nh1,1,extra\n", "", "line 2: 3 fields, expected 2 (name, wages)"),
        ("h.csv", "name,name\nh1,2\n", "", "line 1: the header must name each column once"),
        ("h.jsonl", "", "", "tasks[0].items: h.jsonl has no items"),
        ("h.jsonl", "\n\n", "", "h.jsonl has no items"),
        ("h.txt", "x\n", "", "expected a .jsonl or .csv file"),
        ("h.jsonl", '{"name": "a"}\n', "repeat = 3", "from `items` or `repeat`, not both"),
        ("h.jsonl", b'{"name": "\xff"}\n', "", "tasks[0].items: h.jsonl: 'utf-8' codec"),
        ("h.jsonl", '{"' + "k" * 65 + '": 1}\n', "", "a field name must have 1 to 64 characters"),
    ],
)
def test_a_bad_items_file_is_one_line_naming_the_file_and_line(
    tmp_path: Path, items: str, text: str | bytes, extra: str, want: str
) -> None:
    with pytest.raises(ProjectError) as exc:
        load_project(project(tmp_path, items, text, extra))
    lines = str(exc.value).splitlines()
    assert len(lines) == 1 and want in lines[0], lines
    assert "Traceback" not in str(exc.value)


def test_items_outside_the_project_or_missing_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"name": "x"}\n', encoding="utf-8")
    root = tmp_path / "proj"
    root.mkdir()
    for items, want in [
        ("../elsewhere.jsonl", "is not a file inside"),
        ("nope.jsonl", "no such file 'nope.jsonl'"),
    ]:
        (root / "tower.toml").write_text(
            TOML.replace("{extra}", f'items = "{items}"'), encoding="utf-8"
        )
        with pytest.raises(ProjectError, match=want):
            load_project(root)
