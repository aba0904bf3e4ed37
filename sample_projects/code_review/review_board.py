"""review_board: a small MCP server where the code reviewers post their verdicts.

tower starts it once per session (see [[mcp_servers]] in tower.toml) and offers its tools
to the reviewer agent as `board__post_review` and `board__list_reviews`. Reviews are kept in
memory for the life of the server, so every thread of a session sees the same board; with
`--store PATH` each review is also appended to PATH as one JSON line.

It speaks MCP over stdin/stdout, so it never prints: stdout belongs to the protocol.
    python review_board.py [--store reviews.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

VERDICTS = ("approve", "request_changes", "comment")
MAX_SUMMARY_CHARS = 4_000

server = MCPServer(
    "review_board",
    instructions="A review board: post one review per task, with a verdict and a summary.",
)
reviews: list[dict[str, object]] = []
store: Path | None = None


@server.tool()
def post_review(task: str, verdict: str, summary: str) -> str:
    """Post a review to the board.

    task: the task or change reviewed (e.g. "review-stock"); verdict: one of approve,
    request_changes or comment; summary: what is wrong, why it matters, what changed.
    """
    task, verdict, summary = task.strip(), verdict.strip(), summary.strip()
    if not task:
        raise ToolError("task must not be empty")
    if verdict not in VERDICTS:
        raise ToolError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    if not summary:
        raise ToolError("summary must not be empty")
    if len(summary) > MAX_SUMMARY_CHARS:
        raise ToolError(f"summary is longer than {MAX_SUMMARY_CHARS} characters")
    review = {
        "id": len(reviews) + 1,
        "task": task,
        "verdict": verdict,
        "summary": summary,
        "posted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if store is not None:
        try:
            with store.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(review, ensure_ascii=False) + "\n")
        except OSError as exc:
            why = exc.strerror or exc
            raise ToolError(f"could not save the review to {store}: {why}") from None
    reviews.append(review)
    return f"review #{review['id']} posted for {task}: {verdict}"


@server.tool()
def list_reviews() -> str:
    """Every review posted so far, oldest first: number, task, verdict and summary."""
    if not reviews:
        return "no reviews yet"
    return "\n".join(f"#{r['id']} {r['task']}: {r['verdict']}\n  {r['summary']}" for r in reviews)


def main() -> None:
    global store
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", type=Path, help="also append each review to this JSON-lines file"
    )
    store = parser.parse_args().store
    server.run()


if __name__ == "__main__":
    main()
