"""The ledger's budget tree (sub-agents): a reservation counts against the thread, every
ancestor and the session, so a parent's cap bounds its whole subtree, with calls in flight
at every level of the tree at once."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tower.core.budget import INF, Account, Ledger, Refusal, Reservation

TOL = 1e-9


def test_child_reservation_counts_against_parent_and_session() -> None:
    led = Ledger(session=Account(limit_usd=10.0))
    led.open_thread("lead", 1.0)
    led.open_thread("lead.1", 0.8, parent="lead")
    led.open_thread("lead.1.1", INF, parent="lead.1")
    res = led.reserve("lead.1.1", 0.5, 100)
    assert isinstance(res, Reservation)
    for name in ("lead", "lead.1", "lead.1.1"):
        assert led.threads[name].reserved_usd == pytest.approx(0.5)
    assert led.session.reserved_usd == pytest.approx(0.5)
    # The grandchild has no cap of its own, but its parent's and grandparent's bind.
    refused = led.reserve("lead.1.1", 0.35, 100)
    assert isinstance(refused, Refusal)
    assert (refused.scope, refused.account) == ("subtree", "lead.1")
    assert "lead.1's subtree budget" in refused.describe()
    # The lead's own call is bounded by what its children hold.
    refused = led.reserve("lead", 0.6, 10)
    assert isinstance(refused, Refusal) and refused.scope == "thread"
    led.settle(res, 0.25, 80)
    for name in ("lead", "lead.1", "lead.1.1"):
        assert led.threads[name].spent_usd == pytest.approx(0.25)
        assert led.threads[name].reserved_usd == pytest.approx(0.0)
    assert led.room_usd("lead.1.1") == pytest.approx(0.55)  # lead.1: 0.8 - 0.25
    assert led.room_usd("lead") == pytest.approx(0.75)


def test_unknown_parent_is_refused() -> None:
    led = Ledger()
    with pytest.raises(KeyError):
        led.open_thread("x.1", parent="x")


def test_book_counts_up_the_chain() -> None:
    led = Ledger(session=Account(limit_usd=1.0))
    led.open_thread("a")
    led.open_thread("a.1", parent="a")
    led.book("a.1", 0.125, 40)
    assert (led.threads["a"].spent_usd, led.threads["a"].spent_tokens) == (0.125, 40)
    assert led.session.spent_usd == 0.125
    assert led.threads["a.1"].spent_usd == 0.125


# --- the property: no pot of the tree is ever overshot ----------------------------------

Tree = tuple[
    float,
    dict[str, tuple[str | None, float, float]],  # name → (parent, usd cap, token cap)
    list[tuple[str, float, int]],  # calls: (thread, worst usd, worst tokens)
    list[tuple[int, int, float]],  # steps
]


@st.composite
def _trees(draw: st.DrawFn) -> Tree:
    session_usd = draw(st.floats(0.05, 50.0))
    rng = random.Random(draw(st.integers(0, 2**32)))
    nodes: dict[str, tuple[str | None, float, float]] = {}
    # Roots, then children and grandchildren: up to four levels.
    for r in range(rng.randint(1, 3)):
        nodes[f"r{r}"] = (None, INF, INF)
    for level in range(rng.randint(1, 3)):
        parents = [n for n in nodes if n.count(".") == level]
        for p in parents:
            for k in range(rng.randint(0, 3)):
                nodes[f"{p}.{k}"] = (p, INF, INF)
    capped = draw(st.sampled_from([0.3, 0.6, 0.9]))
    for name, (parent, _, _) in list(nodes.items()):
        usd = rng.uniform(0.02, 0.8) * session_usd if rng.random() < capped else INF
        tokens = rng.randint(2_000, 60_000) if rng.random() < capped / 2 else INF
        nodes[name] = (parent, usd, tokens)
    names = sorted(nodes)
    scale = draw(st.floats(0.002, 0.03))
    calls = [
        (rng.choice(names), rng.uniform(0.0, 2.0) * scale * session_usd, rng.randint(0, 1500))
        for _ in range(rng.randint(150, 220))
    ]
    start_pct = draw(st.sampled_from([100, 90, 70, 55]))
    over_pct = draw(st.sampled_from([0, 0, 20]))
    steps = []
    for _ in range(len(calls) * 3):
        kind = 0 if rng.randrange(100) < start_pct else rng.choice([1, 1, 2])
        if rng.randrange(100) < over_pct:
            frac = 1.0 + rng.random() / 2
        else:
            frac = rng.choice([0.0, 1.0, rng.random()])
        steps.append((kind, rng.randrange(10**6), frac))
    return session_usd, nodes, calls, steps


def _ancestry(nodes: dict[str, tuple[str | None, float, float]], name: str) -> list[str]:
    out = [name]
    while (up := nodes[out[-1]][0]) is not None:
        out.append(up)
    return out


def test_parent_cap_bounds_its_subtree_with_calls_in_flight_at_every_level() -> None:
    """Calls at every level of random trees reserve, settle and release in any order. At
    every step, for every node, what its subtree spent and holds (recomputed here from the
    calls, not read from the ledger) stays within the node's cap, but for what calls booked
    above their reservations; every accepted reservation fitted every pot on its chain, and
    every refusal names a pot that really lacked the room."""
    levels_in_flight: list[int] = []

    @settings(max_examples=120, deadline=None)
    @given(_trees())
    def check(tree: Tree) -> None:
        session_usd, nodes, calls, steps = tree
        led = Ledger(session=Account(limit_usd=session_usd))
        for name in sorted(nodes, key=lambda n: n.count(".")):
            parent, usd, tokens = nodes[name]
            led.open_thread(name, usd, tokens, parent=parent)
        chains = {n: _ancestry(nodes, n) for n in nodes}
        pending = list(calls)
        held: list[Reservation] = []
        spent = dict.fromkeys(nodes, 0.0)  # the truth per thread (own calls only)
        spent_tok = dict.fromkeys(nodes, 0)
        over = dict.fromkeys(nodes, 0.0)  # booked above reservations, own calls
        most_levels = 0

        def subtree_sum(per: dict[str, float], node: str) -> float:
            return sum(v for n, v in per.items() if node in chains[n])

        def check_caps() -> None:
            holding = dict.fromkeys(nodes, 0.0)
            holding_tok = dict.fromkeys(nodes, 0.0)
            for r in held:
                holding[r.thread] += r.usd
                holding_tok[r.thread] += r.tokens
            for node, (_, cap_usd, cap_tok) in nodes.items():
                s_spent = subtree_sum(spent, node)
                s_held = subtree_sum(holding, node)
                s_over = subtree_sum(over, node)
                acct = led.threads[node]
                # The ledger's books agree with the calls...
                assert acct.spent_usd == pytest.approx(s_spent, abs=1e-7)
                assert acct.reserved_usd == pytest.approx(s_held, abs=1e-7)
                # ...and the subtree is within the node's cap.
                assert s_spent + s_held <= cap_usd + s_over + 1e-7
                s_tok = subtree_sum({k: float(v) for k, v in spent_tok.items()}, node)
                if cap_tok != INF and s_over == 0:
                    assert s_tok + subtree_sum(holding_tok, node) <= cap_tok
            total = sum(spent.values()) + sum(r.usd for r in held)
            assert total <= session_usd + sum(over.values()) + 1e-7

        def run(kind: int, pick: int, frac: float) -> None:
            nonlocal most_levels
            if kind == 0 and pending:
                thread, usd, tokens = pending.pop(0)
                pots = [led.threads[n] for n in chains[thread]] + [led.session]
                rooms = [(p.room_usd(), p.room_tokens()) for p in pots]
                res = led.reserve(thread, usd, tokens)
                if isinstance(res, Reservation):
                    held.append(res)
                    for room_usd, room_tok in rooms:
                        assert usd <= room_usd + TOL and tokens <= room_tok
                else:
                    if res.scope == "thread":
                        pot = led.threads[thread]
                    elif res.scope == "subtree":
                        assert res.account in chains[thread][1:]
                        pot = led.threads[res.account or ""]
                    else:
                        pot = led.session
                    room = pot.room_usd() if res.resource == "usd" else pot.room_tokens()
                    assert res.needed > room
            elif held:
                res = held.pop(pick % len(held))
                if kind == 1:
                    cost, toks = res.usd * frac, int(res.tokens * min(frac, 1.0))
                    led.settle(res, cost, toks)
                    spent[res.thread] += cost
                    spent_tok[res.thread] += toks
                    over[res.thread] += max(cost - res.usd, 0.0)
                else:
                    led.release(res)
            levels = {r.thread.count(".") for r in held}
            most_levels = max(most_levels, len(levels))
            check_caps()

        for kind, pick, frac in steps:
            run(kind, pick, frac)
        while held:
            run(1, 0, 1.0)
        levels_in_flight.append(most_levels)
        assert led.open_reservations == 0

    check()
    # Calls really were in flight at several levels of the tree at once, in many trees.
    assert max(levels_in_flight) >= 3, levels_in_flight
    assert sum(n >= 2 for n in levels_in_flight) >= 40, sorted(levels_in_flight)
