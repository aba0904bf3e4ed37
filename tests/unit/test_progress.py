"""A run's progress (tower/core/progress.py) and the reducer's thread tally it reads: the
tally must equal a count of the threads after any sequence of events, and after a snapshot
round trip; progress and ETA must follow from it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_reducer import Log
from tower.core.events import ENDED_STATES, ThreadState
from tower.core.progress import RateMeter, ended_count, progress, rate_text
from tower.core.state import TowerState, fold, snapshot_of, state_from_snapshot

STATES = list(ThreadState)


def brute(state: TowerState) -> dict[ThreadState, int]:
    out: dict[ThreadState, int] = {}
    for view in state.threads.values():
        out[view.state] = out.get(view.state, 0) + 1
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(STATES) | st.none()), min_size=1, max_size=60
    )
)
def test_the_tally_is_the_count_of_threads_by_state(steps: list[tuple[int, object]]) -> None:
    log = Log()
    log.session_started()
    for n, to in steps:
        tid = f"t{n}"
        if to is None:
            log.spawned(tid)  # a spawn (again, under an id the log already has: the newer counts)
        else:
            log.state(tid, to)  # unknown threads change nothing
        log.now += 1
    state = fold(log.events)
    want = brute(state)
    for s in ThreadState:
        assert state.count(s) == want.get(s, 0), s
    assert state.all_ended == all(v.state in ENDED_STATES for v in state.threads.values())
    back = state_from_snapshot(snapshot_of(state))
    assert back is not None
    assert {s: back.count(s) for s in ThreadState} == {s: state.count(s) for s in ThreadState}


def test_progress_counts_copies_not_started_and_gives_an_eta() -> None:
    log = Log()
    log.session_started(budget_usd=None, tasks_planned=10)
    for i in range(4):
        log.spawned(f"job-{i}", planned=True)
    log.state("job-0", ThreadState.DONE)
    log.state("job-1", ThreadState.FAILED)
    log.state("job-2", ThreadState.RUNNING)
    state = fold(log.events)
    p = progress(state, per_s=0.5)
    assert (p.ended, p.done, p.total, p.left) == (2, 1, 10, 8)
    assert p.eta_s == 16.0  # 8 left at half a thread a second
    assert progress(state, per_s=0.0).eta_s is None  # nothing ends yet: no ETA to give
    assert ended_count(state) == 2


def test_the_rate_is_over_the_window_and_zero_until_it_spans_a_second() -> None:
    m = RateMeter(window_s=10)
    m.add(0.0, 0)
    m.add(0.5, 40)
    assert m.per_second() == 0.0
    for t in range(1, 30):
        m.add(float(t), t * 3.0)  # three a second
    assert m.per_second() == 3.0
    assert m.samples[0][0] >= 29 - 10 - 1  # old samples left the window
    assert rate_text(93.44) == "93.4/s" and rate_text(0.2) == "12.0/min"
