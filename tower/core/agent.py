"""One agent loop: model call → tool calls → policy → approval gate → tool result → repeat.

It ends when the agent calls `finish` (or answers without a tool), runs out of steps, fails
or is killed. Every step is announced on the bus; the supervisor owns budgets and the inbox.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from tower.core import compaction, diffs, llm, messages
from tower.core import payloads as pl
from tower.core.admission import LoopLag
from tower.core.budget import Refusal, Reservation
from tower.core.callworkers import WorkerPool
from tower.core.check import check_answer
from tower.core.events import Event, InboxKind, Resolution, ThreadState
from tower.core.policy import Action, Verdict, suggest_grant, workspace_relative
from tower.core.project import AgentSettings, CheckSettings, CompactionSettings, ProjectMeta
from tower.core.ratelimit import Use
from tower.core.responsecache import CachedAnswer, Responses, worth_keeping
from tower.core.resume import has_side_effects
from tower.core.run import Decision, ThreadRun
from tower.core.tokens import schema_chars
from tower.core.tools import ToolError

_USAGE_FIELDS = frozenset(pl.Usage.__dataclass_fields__)
# Streamed text is coalesced into one event per thread at most this often.
DELTA_INTERVAL_S = 0.1
MAX_BACKOFF_S = 30.0


class LoopHost(Protocol):
    """All an agent loop may ask of the rest of tower (the supervisor implements it).

    Each member is one thing the loop cannot decide alone: the log, the budget, a call slot,
    the inbox, the policy, a tool's effect, a thread's ending. The loop never sees the
    ledger, the queue, the bus or the MCP hub themselves."""

    @property
    def settings(self) -> ProjectMeta: ...  # timeouts, retries, backoff
    @property
    def lag(self) -> LoopLag: ...  # the loop's stall, which a call's timeout does not count
    @property
    def pool(self) -> WorkerPool | None: ...  # worker processes that make the calls, if any
    @property
    def responses(self) -> Responses | None: ...  # the response cache, when the project has it
    @property
    def compaction(self) -> CompactionSettings: ...  # when and how long threads are folded
    def context_window(self, model: str) -> int | None: ...  # prompt tokens a model takes
    def compaction_metadata(self, th: ThreadRun, model: str) -> dict[str, Any] | None: ...
    def lane_of(self, th: ThreadRun) -> str | None: ...  # its batch lane, if it has one
    def batch_price(self, model: str) -> llm.Price | None: ...
    async def batch_call(
        self,
        th: ThreadRun,
        lane: str,
        call: str,
        model: str,
        tools: list[dict[str, Any]],
        max_tokens: int,
        attempt: int,
    ) -> llm.CallResult: ...

    def emit(self, payload: pl.Payload, thread: str | None = None, /) -> object: ...
    async def barrier(self) -> None: ...
    # thread lifecycle
    async def checkpoint(self, th: ThreadRun) -> bool: ...
    def set_state(self, th: ThreadRun, state: ThreadState, reason: str = "") -> None: ...
    def finish(
        self, th: ThreadRun, state: ThreadState, reason: str = "", answer: str | None = None
    ) -> None: ...
    def auto_escalate(self, th: ThreadRun, trigger: str) -> None: ...
    async def ask(
        self, th: ThreadRun, kind: InboxKind, wait_state: ThreadState, why: str, **data: Any
    ) -> Decision: ...
    # model calls: slots, rates, money
    async def admit(self, th: ThreadRun) -> bool: ...
    def release_slot(self, ended: bool) -> None: ...
    async def rate_gate(self, th: ThreadRun, model: str, tokens: int) -> Use | None: ...
    def prompt_bound(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tools_chars: int,
    ) -> int: ...
    def price(self, model: str) -> llm.Price | None: ...
    def reserve(self, th: ThreadRun, usd: float, tokens: int) -> Reservation | Refusal: ...
    def release(self, res: Reservation) -> float: ...
    def settle(self, res: Reservation, usd: float, tokens: int) -> None: ...
    def next_call_id(self) -> str: ...
    def endpoint(self, model: str) -> dict[str, Any]: ...
    def tokenizer(self, model: str) -> Any: ...
    def sim_metadata(self, th: ThreadRun, attempt: int) -> dict[str, Any] | None: ...
    # tools and policy
    def tools_for(self, agent: AgentSettings) -> list[dict[str, Any]]: ...
    def has_tool(self, agent: AgentSettings, name: str) -> bool: ...
    def mcp_tool_names(self, agent: AgentSettings) -> list[str]: ...
    def judge(self, th: ThreadRun, tool: str, args: dict[str, Any]) -> Verdict: ...
    async def run_tool(
        self, th: ThreadRun, name: str, args: dict[str, Any], call_id: str = ""
    ) -> str: ...
    def check_of(self, th: ThreadRun) -> CheckSettings | None: ...


EMPTY_NUDGE = (
    "Your last reply was empty: no text and no tool call. Continue the task: call one of "
    "your tools, or call finish with your answer."
)


class _Deltas:
    """Coalesces streamed text into at most one event per DELTA_INTERVAL_S per call."""

    def __init__(self, emit: Callable[[pl.Payload, str], object], thread: str, call: str) -> None:
        self.emit, self.thread, self.call = emit, thread, call
        self.parts: list[str] = []
        self.last = time.monotonic()

    def add(self, text: str) -> None:
        self.parts.append(text)
        now = time.monotonic()
        if now - self.last >= DELTA_INTERVAL_S:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.parts:
            self.emit(pl.LlmDelta(call=self.call, text="".join(self.parts)), self.thread)
            self.parts.clear()


async def _write_diff(th: ThreadRun, tool: str, args: dict[str, Any]) -> dict[str, str]:
    """A write_file approval shows the change as a diff against the file as it is now; it
    is computed here and logged with the item, so replay shows what the human saw."""
    if tool != "write_file" or th.workspace is None:
        return {}
    return await asyncio.to_thread(diffs.approval_diff, th.workspace, args)


def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    """Why a call may run (or not), for the log: replay shows the rule or the default."""
    out: dict[str, Any] = {"policy": str(verdict.action), "rule": verdict.describe()}
    if verdict.rule is not None:
        out["rule_id"] = verdict.rule.id
    return out


class AgentLoop:
    """One thread's loop. It owns its thread's run (`th`) and reaches the rest of tower only
    through `host`, the narrow LoopHost protocol: budgets, the inbox, policy, tools and the
    log are the host's, so this class can be driven by any host (a test's, a worker's)."""

    def __init__(self, host: LoopHost, th: ThreadRun) -> None:
        self.host = host
        self.th = th

    async def run(self) -> None:
        th = self.th
        tools = self.host.tools_for(th.agent)
        tools_chars = schema_chars(tools)
        if not th.messages:
            th.messages.extend(messages.opening(th.agent.system_prompt, th.prompt))
        pending, th.pending = th.pending, []
        for tc in pending:  # a resumed thread: recorded calls that have no result yet
            if not await self.host.checkpoint(th):
                return
            if await self._handle_tool(tc, "resumed after a crash", tc.id in th.interrupted):
                return
        while not th.ended:
            if not await self.host.checkpoint(th):
                return
            if th.steps >= th.agent.max_steps:
                self.host.finish(
                    th,
                    ThreadState.FAILED,
                    f"max_steps: {th.agent.max_steps} model calls without finishing",
                )
                return
            guidance, th.guidance = th.guidance, []
            # The conversation takes the guidance and the reply from the call's events.
            result = await self._call_model(tools, tools_chars, guidance)
            if result is None:
                return
            if not result.tool_calls and not result.text.strip():
                self._empty_turn()  # never an answer: a failed step
                continue
            th.empty_streak = 0
            if not result.tool_calls:
                if await self._conclude(result.text.strip(), "answered"):
                    return
                continue
            for tc in result.tool_calls:
                if not await self.host.checkpoint(th):
                    return
                if await self._handle_tool(tc, result.text.strip()):
                    return

    def _empty_turn(
        self,
    ) -> None:
        """A completion with no text and no tool call (weak models do this often): the first
        time the model is nudged once, recorded as tower's comment; a repeat is a trouble that
        escalates (the next model of the cascade, else the human), never the thread's answer."""
        th = self.th
        th.empty_streak += 1
        if th.empty_streak == 1:
            self.host.emit(pl.Comment(text=EMPTY_NUDGE, by="tower"), th.id)
            th.guidance.append(EMPTY_NUDGE)
            return
        th.empty_streak = 0
        self.host.auto_escalate(
            th, f"empty replies: {th.model} returned no text and no tool call twice"
        )

    async def _call_model(
        self,
        tools: list[dict[str, Any]],
        tools_chars: int,
        guidance: list[str],
    ) -> llm.CallResult | None:
        """Reserves, calls (retrying what may pass on retry), settles. None if the thread ended."""
        th = self.th
        attempt = 0
        unsent = list(guidance)  # goes with the first call started; then it is in the conversation
        while True:
            model = th.model
            ahead = [messages.guidance(note) for note in unsent]
            max_tokens = th.agent.max_tokens
            key = None
            cache = self.host.responses
            if cache is not None:
                sent = th.messages + ahead
                key = cache.key(model, sent, tools, max_tokens, th.agent.temperature)
                if key is not None:
                    answer = await cache.find(key)
                    if answer is not None:
                        if not await self.host.checkpoint(th):
                            return None
                        return self._from_cache(answer, key, model, unsent)
            prompt_est = self.host.prompt_bound(model, th.messages + ahead, tools, tools_chars)
            if await self._compact(model, prompt_est, ahead, tools, tools_chars):
                continue  # the conversation is shorter now: measured again
            # A batch lane's call is priced at batch prices; it holds no call slot and no
            # rate-limit room while its batch waits at the provider (core/batchlane.py).
            lane = self.host.lane_of(th)
            price = self.host.batch_price(model) if lane else self.host.price(model)
            usd = price.cost(prompt_est, max_tokens) if price else 0.0
            use = None
            if lane is None:
                use = await self.host.rate_gate(th, model, prompt_est + max_tokens)
            if not await self.host.checkpoint(th):
                return None
            res = await self._reserve(usd, prompt_est, max_tokens, gate=lane is None)
            if res is None:
                return None
            th.reservation = res
            th.call_id = call = self.host.next_call_id()
            self.host.emit(
                pl.LlmStarted(
                    call=call,
                    step=th.steps + 1,
                    model=model,
                    attempt=attempt,
                    prompt_tokens_est=prompt_est,
                    max_tokens=max_tokens,
                    reserved_usd=res.usd,
                    reserved_tokens=res.tokens,
                    guidance=unsent,
                    lane=lane,
                ),
                th.id,
            )
            unsent = []  # the conversation holds it now (folded from this event)
            deltas = _Deltas(self.host.emit, th.id, call)
            try:
                if lane is not None:
                    result = await self.host.batch_call(
                        th, lane, call, model, tools, max_tokens, attempt
                    )
                else:
                    result = await self._stream(model, tools, max_tokens, attempt, deltas)
            except llm.CallError as err:
                lost = isinstance(err, llm.CallLost)
                retry = await (self._lost if lost else self._failed)(err, res, call, model, attempt)
                if retry is None:
                    return None
                attempt = retry
                continue
            deltas.flush()
            th.cache_break = None  # the provider has seen the shortened prompt now
            self._settle(result, res, call, model, price, use, key)
            return result

    def _from_cache(
        self, answer: CachedAnswer, key: str, model: str, guidance: list[str]
    ) -> llm.CallResult:
        """A call answered from the response cache: recorded as its own event, at $0, with
        the answer it reused; no slot, reservation or provider was needed."""
        th = self.th
        th.steps += 1
        usage = {k: v for k, v in answer.usage.items() if k in _USAGE_FIELDS}
        self.host.emit(
            pl.LlmCached(
                call=self.host.next_call_id(),
                step=th.steps,
                model=model,
                key=key,
                source_session=answer.session,
                source_seq=answer.seq,
                text=answer.text,
                tool_calls=answer.tool_calls,
                usage=pl.Usage(**usage),
                saved_usd=answer.cost_usd,
                guidance=guidance,
            ),
            th.id,
        )
        calls = [
            llm.ToolCall(
                str(c.get("id", "")),
                str(c["function"].get("name", "")),
                str(c["function"].get("arguments", "")),
            )
            for c in answer.tool_calls
        ]
        return llm.CallResult(text=answer.text, tool_calls=calls, finish_reason="cached")

    async def _compact(
        self,
        model: str,
        prompt_est: int,
        ahead: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tools_chars: int,
    ) -> bool:
        """Folds the thread's older tool results when this call's prompt would pass the
        project's share of the model's context window (core/compaction.py). True when it
        folded something. A summary model's call is reserved first; without room for it,
        or if it fails, the results are elided instead, and the event says why."""
        th = self.th
        settings = self.host.compaction
        window = self.host.context_window(model) if settings.at else None
        if not window or prompt_est <= settings.at * window:
            return False
        fold = compaction.to_fold(th.messages, settings.keep_last)
        if not fold:
            return False
        ids = [str(m.get("tool_call_id")) for m in fold]
        mode, summary, note, by = "elide", "", "", ""
        cost, reserved, usage = 0.0, 0.0, pl.Usage()
        if settings.model is not None:
            by = settings.model
            task = next((str(m.get("content")) for m in th.messages if m.get("role") == "user"), "")
            request = compaction.summary_request(fold, task)
            cap = compaction.SUMMARY_MAX_TOKENS
            est = self.host.prompt_bound(by, request, [], 0)
            price = self.host.price(by)
            res = self.host.reserve(th, price.cost(est, cap) if price else 0.0, est + cap)
            if isinstance(res, Refusal):
                note = f"no room for a summary ({res.describe()}): elided"
            else:
                try:
                    result = await llm.stream_call(
                        by,
                        request,
                        None,
                        cap,
                        self.host.settings.call_timeout_s,
                        lambda _text: None,
                        self.host.compaction_metadata(th, by),
                        lag=self.host.lag,
                        **self.host.endpoint(by),
                    )
                except llm.CallError as err:
                    self.host.release(res)
                    note = f"the summary failed ({err}): elided"
                except BaseException:  # killed or stopped meanwhile: the room is given back
                    self.host.release(res)
                    raise
                else:
                    tokens = result.prompt_tokens + result.completion_tokens
                    if result.cost_usd is not None:
                        cost = result.cost_usd
                    elif price is not None:
                        cost = price.cost(result.prompt_tokens, result.completion_tokens)
                    self.host.settle(res, cost, tokens)
                    reserved = res.usd
                    usage = pl.Usage(
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        total_tokens=tokens,
                    )
                    summary = result.text.strip()
                    mode = "summary" if summary else "elide"
                    if not summary:
                        note = "the summary came back empty: elided"
        after = [dict(m) for m in th.messages]
        compaction.apply_fold(after, ids, mode, summary)
        first = next(i for i, m in enumerate(th.messages) if m.get("tool_call_id") in ids)
        th.cache_break = first if th.cache_break is None else min(th.cache_break, first)
        self.host.emit(
            pl.Compacted(
                folded=ids,
                mode=mode,
                summary=summary,
                tokens_before=prompt_est,
                tokens_after=self.host.prompt_bound(model, after + ahead, tools, tools_chars),
                window=window,
                model=by if mode == "summary" else "",
                cost_usd=cost,
                reserved_usd=reserved,
                usage=usage,
                note=note,
            ),
            th.id,
        )
        return True

    async def _reserve(
        self, usd: float, prompt_est: int, max_tokens: int, gate: bool = True
    ) -> Reservation | None:
        """A call slot (unless `gate` is off: a batch lane's call), then the call's
        reservation; a cap that refuses asks the person (its slot given back meanwhile).
        None when the thread ended or the person declined."""
        th = self.th
        # A call slot before the reservation: waiting at the gate holds no money.
        if gate and not await self.host.admit(th):
            return None
        while True:
            res = self.host.reserve(th, usd, prompt_est + max_tokens)
            if not isinstance(res, Refusal):
                return res
            if gate:
                self.host.release_slot(ended=False)  # never hold a slot while a person decides
            decision = await self.host.ask(
                th,
                InboxKind.BUDGET,
                ThreadState.PAUSED,
                "budget",
                scope=res.scope,
                **({"account": res.account} if res.account is not None else {}),
                resource=res.resource,
                reason=res.describe(),
                need_usd=round(usd, 6),
                need_tokens=prompt_est + max_tokens,
                suggest_usd=round(max(usd * 10, usd - res.available), 6)
                if res.resource == "usd"
                else 0.0,
                suggest_tokens=int(max(res.needed * 10, 0)) if res.resource == "tokens" else 0,
            )
            if decision.resolution is not Resolution.RAISED:
                self.host.finish(th, ThreadState.FAILED, "budget")
                return None
            if gate and not await self.host.admit(th):
                return None

    async def _stream(
        self,
        model: str,
        tools: list[dict[str, Any]],
        max_tokens: int,
        attempt: int,
        deltas: _Deltas,
    ) -> llm.CallResult:
        """The call itself, through litellm; its slot is given back however it ends."""
        ended = False
        try:
            # In a worker process when the session has them (core/callworkers.py): the
            # reservation above is already booked here, so a worker holds no money.
            pool = self.host.pool
            result = await (llm.stream_call if pool is None else pool.stream_call)(
                model,
                self.th.messages,
                tools,
                max_tokens,
                self.host.settings.call_timeout_s,
                deltas.add,
                self.host.sim_metadata(self.th, attempt),
                lag=self.host.lag,
                tokenizer=self.host.tokenizer(model),
                temperature=self.th.agent.temperature,
                **self.host.endpoint(model),
            )
            ended = True
            return result
        finally:
            self.host.release_slot(ended=ended)  # a call that ended well opens the gate

    async def _lost(
        self, err: llm.CallError, res: Reservation, call: str, model: str, attempt: int
    ) -> int | None:
        """A call whose answer was lost with its worker process: the provider may have
        answered and billed it, so its reservation is booked as spent ("possibly billed", as
        a crash's lost call is), then the step is tried again; the attempt counts towards
        max_retries, so a call that kills every worker it reaches cannot loop for ever."""
        th = self.th
        self.host.settle(res, res.usd, 0)
        th.reservation = None
        self.host.emit(pl.LlmLost(reserved_usd=res.usd, model=model, reason=str(err)), th.id)
        if attempt >= self.host.settings.max_retries:
            self.host.finish(th, ThreadState.FAILED, f"error: {err}")
            return None
        if not await self.host.checkpoint(th):
            return None
        return attempt + 1

    async def _failed(
        self, err: llm.CallError, res: Reservation, call: str, model: str, attempt: int
    ) -> int | None:
        """A failed call: its reservation released and recorded; then the next attempt's
        number (a retry after backoff, or 0 on the cascade's next model), or None when the
        thread ended."""
        th = self.th
        meta = self.host.settings
        released = self.host.release(res)
        th.reservation = None
        self.host.emit(
            pl.LlmFailed(
                call=call,
                step=th.steps + 1,
                model=model,
                error=str(err),
                retryable=err.retryable,
                attempt=attempt,
                released_usd=released,
            ),
            th.id,
        )
        if err.context_window and th.model_index + 1 < len(th.cascade):
            # The conversation outgrew this model: the next one may hold it.
            self.host.auto_escalate(th, f"context window exceeded on {model}")
            if not await self.host.checkpoint(th):
                return None
            return 0  # the next model gets its own retries
        if not err.retryable or attempt >= meta.max_retries:
            self.host.finish(th, ThreadState.FAILED, f"error: {err}")
            return None
        self.host.set_state(th, ThreadState.RUNNING, f"retrying ({attempt + 1}/{meta.max_retries})")
        delay = min(meta.retry_backoff_s * 2**attempt, MAX_BACKOFF_S)
        delay *= 0.5 + random.random()
        if err.retry_after is not None:  # the provider said how long: never sooner
            delay = max(delay, min(err.retry_after, MAX_BACKOFF_S))
        await asyncio.sleep(delay)
        if not await self.host.checkpoint(th):
            return None
        return attempt + 1

    def _settle(
        self,
        result: llm.CallResult,
        res: Reservation,
        call: str,
        model: str,
        price: llm.Price | None,
        use: Use | None,
        key: str | None = None,
    ) -> None:
        """A call that answered: booked at its real cost and tokens, and recorded (with its
        response-cache key when another call may reuse the answer)."""
        th = self.th
        # litellm prices the usage from its cost map; the same map's per-token prices otherwise.
        cached, written = result.cached_tokens, result.cache_write_tokens
        cost = result.cost_usd
        if cost is None:
            cost = (
                price.cost(result.prompt_tokens, result.completion_tokens, cached, written)
                if price
                else 0.0
            )
        # What the provider's prompt cache saved, priced from the same map as the cost.
        saved = price.saved_by_caching(cached, written) if price and (cached or written) else 0.0
        tokens = result.prompt_tokens + result.completion_tokens
        if use is not None:
            use.tokens = tokens  # the minute's count holds what was really used
        self.host.settle(res, cost, tokens)
        th.reservation = None
        th.steps += 1
        if key is not None and not worth_keeping(
            result.text, result.tool_calls, result.finish_reason
        ):
            key = None  # nothing said, or cut off: never served to another call
        ev = self.host.emit(
            pl.LlmFinished(
                call=call,
                step=th.steps,
                model=model,
                text=result.text,
                tool_calls=[tc.as_message() for tc in result.tool_calls],
                usage=pl.Usage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=tokens,
                    cached_tokens=cached,
                    cache_write_tokens=written,
                    reasoning_tokens=result.reasoning_tokens,
                    estimated=result.usage_estimated,
                ),
                cost_usd=cost,
                saved_usd=round(saved, 10),
                price_known=result.cost_usd is not None or price is not None,
                reserved_usd=res.usd,
                seconds=round(result.seconds, 4),
                finish_reason=result.finish_reason,
                key=key,
            ),
            th.id,
        )
        cache = self.host.responses
        if key is not None and cache is not None and isinstance(ev, Event):
            cache.remember(key, ev.seq, ev.payload)

    async def _handle_tool(self, tc: llm.ToolCall, reason: str, interrupted: bool = False) -> bool:
        """Runs one tool call through policy and the approval gate; True when the thread ended."""
        th = self.th
        try:
            args = json.loads(tc.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            self.host.emit(
                pl.ToolCalled(
                    call_id=tc.id, tool=tc.name, args={"_raw": tc.arguments[:2000]}, reason=reason
                ),
                th.id,
            )
            return self._result(
                tc,
                False,
                f"error: the arguments of {tc.name} were not valid JSON ({exc}); "
                "call the tool again with a JSON object",
            )
        known = self.host.has_tool(th.agent, tc.name)
        verdict = self.host.judge(th, tc.name, args) if known else None
        self.host.emit(
            pl.ToolCalled.of(
                call_id=tc.id,
                tool=tc.name,
                args=args,
                reason=reason,
                **_verdict_fields(verdict) if verdict else {},
            ),
            th.id,
        )
        if verdict is None:
            names = [*th.agent.tools, *self.host.mcp_tool_names(th.agent)]
            return self._result(
                tc,
                False,
                f"error: no tool named {tc.name!r}; your tools are {', '.join(names)}",
            )
        if tc.name == "finish":
            return await self._conclude(str(args.get("answer", "")).strip(), "finished", tc)
        self._notice_repeats(tc.name, args)
        if tc.name == "ask_human":
            question = str(args.get("question", "")).strip() or "(no question given)"
            decision = await self.host.ask(
                th,
                InboxKind.QUESTION,
                ThreadState.WAITING,
                "asked the human",
                question=question,
                reason=reason,
                call_id=tc.id,
            )
            if decision.resolution is Resolution.ANSWERED:
                return self._result(tc, True, decision.text or "")
            note = f" ({decision.text})" if decision.text else ""
            return self._result(tc, False, f"The human declined to answer{note}.")
        if verdict.action is Action.DENY:
            return self._result(tc, False, f"error: refused by policy ({verdict.describe()})")
        if interrupted or verdict.action is Action.ASK:
            why = (
                f"interrupted — run again? tower stopped after this {tc.name} began, so it "
                "may or may not have happened"
                if interrupted
                else reason
            )
            shown = await _write_diff(th, tc.name, args)
            decision = await self.host.ask(
                th,
                InboxKind.APPROVAL,
                ThreadState.WAITING,
                f"interrupted {tc.name}: run again?"
                if interrupted
                else f"waiting for approval of {tc.name}",
                tool=tc.name,
                args=args,
                reason=why,
                call_id=tc.id,
                policy_rule=verdict.describe(),
                suggest=suggest_grant(
                    tc.name,
                    workspace_relative(args, str(th.workspace.root) if th.workspace else None),
                ),
                **({"interrupted": True} if interrupted else {}),
                **shown,
            )
            if decision.resolution is not Resolution.APPROVED:
                if interrupted:
                    return self._result(tc, False, "not run again after an interruption")
                note = f": {decision.text}" if decision.text else ""
                who = "the human" if decision.by == "human" else decision.by
                return self._result(tc, False, f"denied by {who}{note}")
            if decision.args is not None:
                args = decision.args
                # Edited arguments are judged again: a deny rule wins over everyone.
                again = self.host.judge(th, tc.name, args)
                if again.action is Action.DENY:
                    return self._result(tc, False, f"error: refused by policy ({again.describe()})")
            if decision.text and not interrupted:
                th.guidance.append(decision.text)
        if has_side_effects(tc.name):
            # Commit barrier: the decision and the intent are on disk before the effect happens.
            await self.host.barrier()
        try:
            output = await self.host.run_tool(th, tc.name, args, tc.id)
        except ToolError as exc:
            return self._result(tc, False, f"error: {exc}")
        except OSError as exc:
            return self._result(tc, False, f"error: {exc.strerror or exc}")
        return self._result(tc, True, output)

    async def _conclude(self, answer: str, reason: str, tc: llm.ToolCall | None = None) -> bool:
        """The thread has an answer: it is done if the task's check passes (or it has none);
        otherwise the model hears why, and the thread escalates. True when the thread ended."""
        th = self.th
        root = th.workspace.root if th.workspace is not None else None
        outcome = await check_answer(self.host.check_of(th), answer, root)
        if outcome is not None:
            self.host.emit(
                pl.Checked(passed=outcome.passed, detail=outcome.detail, model=th.model), th.id
            )
        if outcome is None or outcome.passed:
            if tc is not None:
                self._result(tc, True, "finished")
            self.host.finish(th, ThreadState.DONE, reason, answer=answer)
            return True
        if tc is not None:  # on a text answer, the conversation adds the note from CHECKED
            self._result(tc, False, messages.check_note(outcome.detail))
        self.host.auto_escalate(th, f"check failed: {outcome.detail}")
        return th.ended

    def _notice_repeats(self, name: str, args: dict[str, Any]) -> None:
        """The same call N times in a row is a loop: escalate, and tell the model."""
        th = self.th
        n = th.agent.escalate_on_repeat
        th.recent_calls.append(name + json.dumps(args, sort_keys=True, ensure_ascii=False))
        del th.recent_calls[:-n]
        if len(th.recent_calls) == n and len(set(th.recent_calls)) == 1:
            th.recent_calls.clear()
            th.guidance.append(
                f"You called {name} {n} times with the same arguments; the result will not "
                "change. Try a different approach."
            )
            self.host.auto_escalate(th, f"loop: {name} called {n} times with the same arguments")

    def _result(self, tc: llm.ToolCall, ok: bool, content: str) -> bool:
        th = self.th
        self.host.emit(pl.ToolResult(call_id=tc.id, tool=tc.name, ok=ok, result=content), th.id)
        # Tool errors in a row (not a human's "no") escalate: the model is out of its depth.
        if ok:
            th.error_streak = 0
        elif content.startswith("error:"):
            th.error_streak += 1
            if th.error_streak >= th.agent.escalate_after_errors:
                th.error_streak = 0
                self.host.auto_escalate(
                    th, f"{th.agent.escalate_after_errors} tool errors in a row"
                )
        return th.ended
