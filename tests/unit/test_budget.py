"""The reserve → settle ledger (tower/core/budget.py): arithmetic, refusals, idempotence,
raised limits, and the promise that a cap is never overshot with many calls in flight."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tower.core.budget import INF, Account, Ledger, Refusal, Reservation

TOL = 1e-9


def _ledger(
    session_usd: float = INF, session_tokens: float = INF, **threads: tuple[float, float]
) -> Ledger:
    led = Ledger(session=Account(limit_usd=session_usd, limit_tokens=session_tokens))
    for name, (usd, tokens) in threads.items():
        led.open_thread(name, usd, tokens)
    return led


def _assert_caps(led: Ledger, over: dict[str, tuple[float, int]] | None = None) -> None:
    """Every pot within its caps, but for `over`: what calls that cost more than their
    reservation booked past it, per thread (the session's is their sum). The ledger books the
    truth, so a provider that counts more than tower's estimate can take a pot past its cap
    by that much, and never by more (never by calls in flight)."""
    over = over or {}
    session_over = (sum(u for u, _ in over.values()), sum(t for _, t in over.values()))
    pots = [(led.session, session_over)]
    pots += [(pot, over.get(name, (0.0, 0))) for name, pot in led.threads.items()]
    for pot, (over_usd, over_tokens) in pots:
        assert pot.spent_usd + pot.reserved_usd <= pot.limit_usd + over_usd + TOL
        assert pot.spent_usd <= pot.limit_usd + over_usd + TOL
        assert pot.spent_tokens + pot.reserved_tokens <= pot.limit_tokens + over_tokens
        assert pot.spent_tokens <= pot.limit_tokens + over_tokens
        assert pot.reserved_usd >= 0.0
        assert pot.reserved_tokens >= 0


# --- arithmetic ---------------------------------------------------------------------------


def test_reserve_books_against_thread_and_session() -> None:
    led = _ledger(10.0, 10_000, a=(1.0, 5000), b=(1.0, 5000))
    res = led.reserve("a", 0.25, 1200)
    assert isinstance(res, Reservation)
    assert (res.thread, res.usd, res.tokens) == ("a", 0.25, 1200)
    for pot in (led.threads["a"], led.session):
        assert pot.reserved_usd == pytest.approx(0.25)
        assert pot.reserved_tokens == 1200
        assert pot.spent_usd == 0.0
        assert pot.spent_tokens == 0
    assert led.threads["b"].reserved_usd == 0.0
    assert led.threads["a"].room_usd() == pytest.approx(0.75)
    assert led.session.room_usd() == pytest.approx(9.75)
    assert led.session.room_tokens() == 10_000 - 1200
    assert led.open_reservations == 1


def test_reservation_ids_are_distinct() -> None:
    led = _ledger(a=(INF, INF))
    ids = {led.reserve("a", 0.01, 1).id for _ in range(50)}
    assert len(ids) == 50
    assert led.open_reservations == 50


def test_settle_turns_reservation_into_real_spend() -> None:
    led = _ledger(10.0, 10_000, a=(1.0, 5000))
    res = led.reserve("a", 0.25, 1200)
    assert isinstance(res, Reservation)
    booked = led.settle(res, 0.1, 700)
    assert booked == (0.1, 700)
    for pot in (led.threads["a"], led.session):
        assert pot.reserved_usd == pytest.approx(0.0, abs=TOL)
        assert pot.reserved_tokens == 0
        assert pot.spent_usd == pytest.approx(0.1)
        assert pot.spent_tokens == 700
    assert led.open_reservations == 0
    assert led.threads["a"].room_usd() == pytest.approx(0.9)


def test_release_returns_the_reservation_without_spending() -> None:
    led = _ledger(10.0, 10_000, a=(1.0, 5000))
    res = led.reserve("a", 0.25, 1200)
    assert isinstance(res, Reservation)
    assert led.release(res) == 0.25
    for pot in (led.threads["a"], led.session):
        assert pot.reserved_usd == pytest.approx(0.0, abs=TOL)
        assert pot.reserved_tokens == 0
        assert pot.spent_usd == 0.0
        assert pot.spent_tokens == 0
    assert led.open_reservations == 0


def test_release_and_settle_are_idempotent() -> None:
    led = _ledger(10.0, 10_000, a=(1.0, 5000))
    r1 = led.reserve("a", 0.2, 100)
    r2 = led.reserve("a", 0.3, 200)
    assert isinstance(r1, Reservation)
    assert isinstance(r2, Reservation)
    assert led.release(r1) == 0.2
    assert led.release(r1) == 0.0
    assert led.settle(r1, 0.2, 100) == (0.0, 0)  # a released reservation cannot be spent
    assert led.settle(r2, 0.1, 50) == (0.1, 50)
    assert led.settle(r2, 0.1, 50) == (0.0, 0)
    assert led.release(r2) == 0.0
    for pot in (led.threads["a"], led.session):
        assert pot.spent_usd == pytest.approx(0.1)
        assert pot.spent_tokens == 50
        assert pot.reserved_usd == pytest.approx(0.0, abs=TOL)
        assert pot.reserved_tokens == 0
    assert led.open_reservations == 0


def test_settle_of_one_reservation_leaves_others_reserved() -> None:
    led = _ledger(10.0, 10_000, a=(5.0, 5000), b=(5.0, 5000))
    ra = led.reserve("a", 0.5, 100)
    rb = led.reserve("b", 0.7, 300)
    assert isinstance(ra, Reservation)
    assert isinstance(rb, Reservation)
    led.settle(ra, 0.4, 90)
    assert led.session.reserved_usd == pytest.approx(0.7)
    assert led.session.reserved_tokens == 300
    assert led.session.spent_usd == pytest.approx(0.4)
    assert led.threads["b"].reserved_usd == pytest.approx(0.7)
    assert led.threads["b"].spent_usd == 0.0


# --- refusals -----------------------------------------------------------------------------


def test_refusal_names_thread_usd() -> None:
    led = _ledger(10.0, 10_000, a=(0.5, 5000))
    r = led.reserve("a", 0.6, 10)
    assert isinstance(r, Refusal)
    assert (r.scope, r.resource) == ("thread", "usd")
    assert r.needed == 0.6
    assert r.available == pytest.approx(0.5)
    text = r.describe()
    assert "thread" in text
    assert "$0.6000" in text
    assert "$0.5000" in text
    assert led.session.reserved_usd == 0.0  # nothing booked on refusal
    assert led.threads["a"].reserved_usd == 0.0
    assert led.open_reservations == 0


def test_refusal_names_thread_tokens() -> None:
    led = _ledger(10.0, 10_000, a=(5.0, 1000))
    r = led.reserve("a", 0.1, 1001)
    assert isinstance(r, Refusal)
    assert (r.scope, r.resource) == ("thread", "tokens")
    assert r.needed == 1001
    assert r.available == 1000
    assert "thread token budget" in r.describe()
    assert "1001" in r.describe()


def test_refusal_names_session_usd() -> None:
    led = _ledger(1.0, 10_000, a=(5.0, 5000))
    first = led.reserve("a", 0.7, 10)
    assert isinstance(first, Reservation)
    r = led.reserve("a", 0.4, 10)
    assert isinstance(r, Refusal)
    assert (r.scope, r.resource) == ("session", "usd")
    assert r.available == pytest.approx(0.3)
    assert r.describe().startswith("session budget")
    assert led.session.reserved_usd == pytest.approx(0.7)
    assert led.threads["a"].reserved_usd == pytest.approx(0.7)


def test_refusal_names_session_tokens() -> None:
    led = _ledger(10.0, 500, a=(5.0, 5000))
    r = led.reserve("a", 0.1, 501)
    assert isinstance(r, Refusal)
    assert (r.scope, r.resource) == ("session", "tokens")
    assert r.available == 500
    assert "session token budget" in r.describe()


def test_refusal_describe_never_shows_negative_room() -> None:
    r = Refusal("session", "usd", 0.5, -0.25)
    assert "-" not in r.describe()
    r = Refusal("thread", "tokens", 10, -3)
    assert "-" not in r.describe()


def test_spent_counts_against_the_cap() -> None:
    led = _ledger(1.0, INF, a=(INF, INF))
    res = led.reserve("a", 0.8, 0)
    assert isinstance(res, Reservation)
    led.settle(res, 0.8, 0)
    r = led.reserve("a", 0.3, 0)
    assert isinstance(r, Refusal)
    assert r.available == pytest.approx(0.2)
    assert isinstance(led.reserve("a", 0.2, 0), Reservation)


def test_a_call_that_cost_more_than_it_reserved_is_booked_in_full_and_closes_the_pot() -> None:
    """A provider that counted more tokens than tower's estimate: the truth is booked, the
    pot goes past its cap by exactly the excess, and no call is admitted until it is raised."""
    led = _ledger(1.0, 1000, a=(0.5, INF), b=(INF, INF))
    other = led.reserve("b", 0.3, 300)
    res = led.reserve("a", 0.5, 600)
    assert isinstance(other, Reservation) and isinstance(res, Reservation)
    assert led.settle(res, 0.75, 900) == (0.75, 900)
    thread, session = led.threads["a"], led.session
    assert (thread.spent_usd, thread.spent_tokens, thread.reserved_usd) == (0.75, 900, 0.0)
    assert thread.room_usd() == pytest.approx(-0.25)  # over the thread's cap by the excess
    assert session.spent_usd + session.reserved_usd == pytest.approx(1.05)
    assert session.room_tokens() == -200  # 900 spent + 300 still reserved for b
    refused = led.reserve("a", 0.0, 0)  # over the cap: not even a free call fits
    assert isinstance(refused, Refusal) and refused.scope == "thread"
    assert "$0.0000 left" in refused.describe()
    refused = led.reserve("b", 0.01, 0)  # b's own pot has room, the session has none
    assert isinstance(refused, Refusal) and refused.scope == "session"
    assert led.settle(other, 0.3, 300) == (0.3, 300)  # a call in flight still settles
    led.raise_limit(None, usd=1.0, tokens=1000)
    led.raise_limit("a", usd=0.5)
    assert isinstance(led.reserve("a", 0.2, 100), Reservation)


def test_exactly_the_remaining_room_is_accepted() -> None:
    led = _ledger(0.3, 300, a=(INF, INF))
    for _ in range(3):  # 0.1 + 0.1 + 0.1 > 0.3 in binary floating point
        assert isinstance(led.reserve("a", 0.1, 100), Reservation)
    assert isinstance(led.reserve("a", 1e-6, 0), Refusal)
    assert isinstance(led.reserve("a", 0.0, 1), Refusal)


def test_two_hundred_in_flight_fill_the_cap_exactly() -> None:
    led = _ledger(2.0, INF, **{f"t{i}": (INF, INF) for i in range(10)})
    held = [led.reserve(f"t{i % 10}", 0.01, 0) for i in range(200)]
    assert all(isinstance(r, Reservation) for r in held)
    assert led.open_reservations == 200
    refused = led.reserve("t0", 0.01, 0)
    assert isinstance(refused, Refusal)
    assert refused.scope == "session"
    _assert_caps(led)


# --- raising limits -----------------------------------------------------------------------


def test_raise_limit_session() -> None:
    led = _ledger(1.0, 1000, a=(INF, INF))
    assert isinstance(led.reserve("a", 1.5, 10), Refusal)
    led.raise_limit(None, usd=0.5)
    assert led.session.limit_usd == pytest.approx(1.5)
    assert led.session.limit_tokens == 1000
    assert isinstance(led.reserve("a", 1.5, 10), Reservation)
    assert isinstance(led.reserve("a", 0.0, 1000), Refusal)
    led.raise_limit(None, tokens=20)
    assert led.session.limit_tokens == 1020
    assert led.session.limit_usd == pytest.approx(1.5)
    assert isinstance(led.reserve("a", 0.0, 1000), Reservation)


def test_raise_limit_thread_only_touches_that_thread() -> None:
    led = _ledger(10.0, 100_000, a=(0.1, 100), b=(0.1, 100))
    refused = led.reserve("a", 0.15, 150)
    assert isinstance(refused, Refusal)
    assert refused.scope == "thread"
    led.raise_limit("a", usd=0.1, tokens=100)
    assert led.threads["a"].limit_usd == pytest.approx(0.2)
    assert led.threads["a"].limit_tokens == 200
    assert led.threads["b"].limit_usd == pytest.approx(0.1)
    assert led.threads["b"].limit_tokens == 100
    assert led.session.limit_usd == pytest.approx(10.0)
    assert isinstance(led.reserve("a", 0.15, 150), Reservation)
    assert isinstance(led.reserve("b", 0.15, 150), Refusal)


def test_raise_limit_on_unlimited_stays_unlimited() -> None:
    led = _ledger(a=(INF, INF))
    led.raise_limit(None, usd=1.0, tokens=5)
    led.raise_limit("a", usd=1.0, tokens=5)
    assert math.isinf(led.session.limit_usd)
    assert math.isinf(led.threads["a"].limit_tokens)


def test_thread_cap_binds_before_a_roomy_session() -> None:
    led = _ledger(100.0, INF, a=(0.5, INF), b=(0.5, INF))
    assert isinstance(led.reserve("a", 0.3, 0), Reservation)
    r = led.reserve("a", 0.3, 0)
    assert isinstance(r, Refusal)
    assert r.scope == "thread"
    assert isinstance(led.reserve("b", 0.3, 0), Reservation)


# --- the property: a cap can never be overshot --------------------------------------------


# session usd, session tokens, {thread: (usd cap, token cap)}, calls, steps
Schedule = tuple[
    float,
    int,
    dict[str, tuple[float, float]],
    list[tuple[str, float, int]],
    list[tuple[int, int, float]],
]


@st.composite
def _schedules(draw: st.DrawFn) -> Schedule:
    session_usd = draw(st.floats(0.01, 100.0))
    session_tokens = draw(st.integers(1000, 1_000_000))
    n_threads = draw(st.integers(1, 8))
    threads = {}
    for i in range(n_threads):
        # A thread's cap is unlimited or a share of the session's (may exceed it).
        usd = draw(st.one_of(st.just(INF), st.floats(0.05, 1.5).map(lambda f: f * session_usd)))
        tokens = draw(
            st.one_of(st.just(INF), st.floats(0.05, 1.5).map(lambda f: int(f * session_tokens)))
        )
        threads[f"t{i}"] = (usd, tokens)
    n_calls = draw(st.integers(200, 260))
    # Worst cases sized so that 200+ calls need from a quarter of the cap to several caps.
    scale_usd = draw(st.floats(0.0005, 0.03))
    scale_tok = draw(st.floats(0.0005, 0.03))
    # Percentage of steps that start a call (the rest settle or release one): at 100 every
    # call is in flight at once before the first settles.
    start_pct = draw(st.sampled_from([100, 95, 85, 70, 55]))
    # Percentage of settled calls that cost more than they reserved (a provider counting
    # more tokens than tower's estimate): by up to half as much again.
    over_pct = draw(st.sampled_from([0, 10, 50]))
    # The bulk of the schedule comes from a seeded RNG: drawing hundreds of values one by
    # one through Hypothesis is slow and shrinks no better here.
    rng = random.Random(draw(st.integers(0, 2**32)))
    names = sorted(threads)
    calls = [
        (
            rng.choice(names),
            rng.uniform(0.0, 2.0) * scale_usd * session_usd,
            int(rng.uniform(0.0, 2.0) * scale_tok * session_tokens),
        )
        for _ in range(n_calls)
    ]
    # Each step: 0 = start the next call, 1 = settle an open one, 2 = release an open one;
    # the integer picks which open reservation, the float how much of it is really spent
    # (above 1: more than was reserved).
    steps = []
    for _ in range(rng.randint(n_calls, n_calls * 3)):
        kind = 0 if rng.randrange(100) < start_pct else rng.choice([1, 1, 2])
        if rng.randrange(100) < over_pct:
            frac = rng.choice([1.5, 1.0 + rng.random() / 2])
        else:
            frac = rng.choice([0.0, 1.0, rng.random()])
        steps.append((kind, rng.randrange(10**6), frac))
    return session_usd, session_tokens, threads, calls, steps


def test_cap_is_never_overshot_with_hundreds_in_flight() -> None:
    """Hundreds of calls reserve, settle (below, at or above what they reserved) and
    release in any order: at every step each pot holds within its caps, but for what calls
    booked above their reservations; a reservation is accepted only where it fits and
    refused only where it does not (so never once a pot is over); spending is the truth."""
    # The most reservations held at once, per example: the caps hold at every step (checked
    # inside), and this shows the steps really had hundreds of calls in flight together.
    peaks: list[int] = []
    overruns: list[float] = []  # per example, what settles booked above their reservations

    @settings(max_examples=150, deadline=None)
    @given(_schedules())
    def check(schedule: Schedule) -> None:
        session_usd, session_tokens, threads, calls, steps = schedule
        led = Ledger(session=Account(limit_usd=session_usd, limit_tokens=session_tokens))
        for name, (usd, tokens) in threads.items():
            led.open_thread(name, usd, tokens)
        pending = list(calls)
        held: list[Reservation] = []
        settled_usd = 0.0
        settled_tokens = 0
        over = dict.fromkeys(threads, (0.0, 0))  # booked above reservations, per thread
        peak = 0

        def run(kind: int, pick: int, frac: float) -> None:
            nonlocal settled_usd, settled_tokens, peak
            if kind == 0 and pending:
                thread, usd, tokens = pending.pop(0)
                acct = led.threads[thread]
                rooms = [(p.room_usd(), p.room_tokens()) for p in (acct, led.session)]
                res = led.reserve(thread, usd, tokens)
                if isinstance(res, Reservation):
                    held.append(res)
                    for room_usd, room_tok in rooms:  # it really fitted
                        assert usd <= room_usd + TOL
                        assert tokens <= room_tok
                else:  # the refusal is real and names the pot that is short
                    pot = acct if res.scope == "thread" else led.session
                    need, room = (
                        (usd, pot.room_usd())
                        if res.resource == "usd"
                        else (tokens, pot.room_tokens())
                    )
                    assert need > room
                    assert res.needed == need
            elif held:
                res = held.pop(pick % len(held))
                if kind == 1:
                    cost, toks = res.usd * frac, int(res.tokens * frac)
                    assert led.settle(res, cost, toks) == (cost, toks)  # the truth, in full
                    settled_usd += cost
                    settled_tokens += toks
                    over_usd, over_tokens = over[res.thread]
                    over[res.thread] = (
                        over_usd + max(cost - res.usd, 0.0),
                        over_tokens + max(toks - res.tokens, 0),
                    )
                else:
                    assert led.release(res) == res.usd
            peak = max(peak, len(held))
            _assert_caps(led, over)
            assert led.open_reservations == len(held)
            assert led.session.spent_usd == pytest.approx(settled_usd, abs=TOL)
            assert led.session.spent_tokens == settled_tokens
            assert led.session.reserved_usd == pytest.approx(sum(r.usd for r in held), abs=TOL)
            assert led.session.reserved_tokens == sum(r.tokens for r in held)

        for kind, pick, frac in steps:
            run(kind, pick, frac)
        # Drain: start whatever is left, then settle everything at its full worst case.
        while pending:
            run(0, 0, 0.0)
        while held:
            run(1, 0, 1.0)
        peaks.append(peak)
        overrun = sum(u for u, _ in over.values())
        overruns.append(overrun)
        assert led.open_reservations == 0
        assert led.session.reserved_usd == pytest.approx(0.0, abs=TOL)
        assert led.session.spent_usd <= session_usd + overrun + TOL
        total_threads = sum(p.spent_usd for p in led.threads.values())
        assert total_threads == pytest.approx(led.session.spent_usd, abs=TOL)

    check()
    # Hundreds at once, not a handful: at least one schedule had every one of its 200+
    # calls reserved before the first settled, and many had a hundred or more.
    assert max(peaks) >= 200, f"most calls ever in flight together: {max(peaks)}"
    assert sum(p >= 100 for p in peaks) >= 10, sorted(peaks)
    # Calls above their reservation were really settled, in many schedules.
    assert sum(o > 0 for o in overruns) >= 10, sorted(overruns)


async def test_two_hundred_tasks_never_overshoot() -> None:
    rng = random.Random(20240607)
    limit = 1.0
    thread_limit = 0.3
    threads = [f"t{i}" for i in range(4)]  # 4 x 0.3 > 1.0: both kinds of cap bind
    led = _ledger(limit, INF, **{t: (thread_limit, INF) for t in threads})
    worst = 0.01
    min_frac = 0.6
    plans = [
        (threads[i % len(threads)], rng.randint(0, 6), rng.uniform(min_frac, 1.0))
        for i in range(200)
    ]
    spent: list[float] = []
    refused: list[Refusal] = []
    in_flight = 0
    peak = 0

    async def call(thread: str, yields: int, frac: float) -> None:
        nonlocal in_flight, peak
        res = led.reserve(thread, worst, 100)
        _assert_caps(led)
        if isinstance(res, Refusal):
            refused.append(res)
            return
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(yields):
            await asyncio.sleep(0)
            _assert_caps(led)
        cost = worst * frac
        led.settle(res, cost, 50)
        in_flight -= 1
        spent.append(cost)
        _assert_caps(led)

    await asyncio.gather(*(call(*p) for p in plans))

    assert len(spent) + len(refused) == 200
    assert led.session.spent_usd == pytest.approx(sum(spent), abs=TOL)
    assert led.session.spent_usd <= limit + TOL
    for t in threads:
        assert led.threads[t].spent_usd <= thread_limit + TOL
    # Every accepted call spent at least min_frac of its worst case, so at most this many fit.
    assert len(spent) <= math.floor(limit / (worst * min_frac) + TOL)
    assert refused, "the caps should have refused some of 200 calls"
    assert {r.scope for r in refused} <= {"thread", "session"}
    assert all(r.resource == "usd" for r in refused)
    assert peak > 1, "calls should really have been in flight together"
    assert led.open_reservations == 0
    assert led.session.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert led.session.spent_tokens == 50 * len(spent)
