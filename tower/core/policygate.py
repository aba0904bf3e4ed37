"""The policy gate: the rules in force for tool calls, and the time-boxed grants.

The project's rules come from tower.toml (replaced on a reload); a grant is an allow rule
the person adds from the inbox for some minutes. Both are recorded (POLICY_SET, RULE_GRANTED,
RULE_ENDED), so replay shows which rule let a call run, and a resumed session keeps the
grants whose time has not run out. Matching itself is the pure `policy.decide`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import Event, EventKind
from tower.core.policy import Action, Rule, Verdict, decide, workspace_relative
from tower.core.run import CommandError


def check_minutes(minutes: float) -> None:
    """A grant's time box: positive and finite (NaN is neither <= 0 nor > 0)."""
    if not (0 < minutes < math.inf):
        raise CommandError("a grant needs a positive number of minutes")


class PolicyGate:
    def __init__(self, bus: Bus, rules: list[Rule]) -> None:
        self.bus = bus
        self.rules = rules
        self.grants: dict[str, Rule] = {}
        self._ids = itertools.count(1)
        self._expiries: list[asyncio.TimerHandle] = []
        self._closed = False

    def announce(self) -> None:
        """Records the project's rules (at a resume, after a reload): the policy view and
        replay read them from the log."""
        self.bus.emit(pl.PolicySet(policy=[r.to_dict() for r in self.rules]))

    def set_rules(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.announce()

    def in_force(self) -> tuple[list[Rule], list[Rule]]:
        """The project's rules, and the grants whose time has not run out."""
        now = self.bus.now()
        return self.rules, [r for r in self.grants.values() if r.active(now)]

    def judge(self, agent: str, root: str | None, tool: str, args: dict[str, Any]) -> Verdict:
        """The verdict on a call, its paths seen relative to the thread's workspace `root`."""
        rules, grants = self.in_force()
        return decide(rules, tool, workspace_relative(args, root), agent, self.bus.now(), grants)

    def grant(
        self,
        tool: str,
        args: dict[str, str] | None,
        *,
        agent: str | None,
        minutes: float,
        item: str | None,
        by: str,
    ) -> Rule:
        """Adds a time-boxed allow rule (recorded) that ends by itself after `minutes`."""
        check_minutes(minutes)
        rid = f"g{next(self._ids)}"
        while rid in self.grants or rid in self.bus.state.grants:
            rid = f"g{next(self._ids)}"
        rule = Rule(
            Action.ALLOW,
            tool=tool,
            args=tuple((args or {}).items()),
            agent=agent,
            expires=self.bus.now() + minutes * 60,
            source=f"granted by {by}" + (f" on {item}" if item else ""),
            id=rid,
        )
        self.grants[rid] = rule
        self.bus.emit(pl.RuleGranted(rule=rule.to_dict(), minutes=minutes, by=by, item=item))
        self._schedule_expiry(rule)
        return rule

    def revoke(self, rid: str) -> None:
        if rid not in self.grants:
            raise CommandError(f"no time-boxed rule {rid!r} in force")
        self._end(rid, "revoked")

    def restore(self, events: list[Event]) -> None:
        """A resumed session keeps the grants whose time has not run out; new grant ids
        continue the log's numbering."""
        found: dict[str, Rule] = {}
        highest = 0
        for ev in events:
            if ev.kind not in (EventKind.RULE_GRANTED, EventKind.RULE_ENDED):
                continue
            p = pl.payload_of(ev)
            if isinstance(p, pl.RuleGranted):
                rule = Rule.from_dict(p.rule)
                found[rule.id] = rule
                if rule.id[1:].isdigit():
                    highest = max(highest, int(rule.id[1:]))
            elif isinstance(p, pl.RuleEnded):
                found.pop(p.rule, None)
        self._ids = itertools.count(highest + 1)
        now = self.bus.now()
        for rule in found.values():
            if rule.active(now):
                self.grants[rule.id] = rule
                self._schedule_expiry(rule)
            else:
                self.bus.emit(pl.RuleEnded(rule=rule.id, reason="expired"))

    def close(self) -> None:
        """The session is ending: no expiry fires (nor is recorded) after its last event."""
        self._closed = True
        for handle in self._expiries:
            handle.cancel()

    def _schedule_expiry(self, rule: Rule) -> None:
        delay = max((rule.expires or 0) - self.bus.now(), 0.0)
        handle = asyncio.get_running_loop().call_later(delay, self._end, rule.id, "expired")
        self._expiries.append(handle)

    def _end(self, rid: str, reason: str) -> None:
        if self.grants.pop(rid, None) is not None and not self._closed:
            self.bus.emit(pl.RuleEnded(rule=rid, reason=reason))
