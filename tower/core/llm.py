"""The litellm boundary: lazy import, model checks, prices, one streamed call, error reading.

litellm takes seconds to import, so nothing imports it at module level; `load_litellm()` does
it once (the TUI calls it off its critical path). Every model call, sim or real, goes through
`litellm.acompletion` here.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tower.core.admission import LoopLag, provider_timeout
from tower.core.simprofiles import SIM_PROFILES, SimProfile, is_sim
from tower.core.tokens import estimate_tokens, text_tokens

_litellm: Any = None
log = logging.getLogger("tower.llm")


def load_litellm() -> Any:
    """Imports and configures litellm once: no network cost map, no banners, sim registered."""
    global _litellm
    if _litellm is not None:
        return _litellm
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.ERROR)
        lg.handlers.clear()
        lg.propagate = False
    from tower.core.sim import SimProvider

    litellm.custom_provider_map = [
        *[p for p in litellm.custom_provider_map if p.get("provider") != "sim"],
        {"provider": "sim", "custom_handler": SimProvider()},
    ]
    from litellm.utils import custom_llm_setup

    custom_llm_setup()
    _litellm = litellm
    register_sim_prices({name: prof for name, prof in SIM_PROFILES.items()})
    return litellm


def register_sim_prices(profiles: dict[str, SimProfile]) -> None:
    """Puts sim prices in litellm's cost map, so sim cost is computed as for real models."""
    litellm = load_litellm()
    litellm.register_model(
        {
            name: {
                "input_cost_per_token": prof.input_usd_per_mtok / 1e6,
                "output_cost_per_token": prof.output_usd_per_mtok / 1e6,
                "cache_read_input_token_cost": prof.cached_usd_per_mtok / 1e6,
                "litellm_provider": "sim",
                "mode": "chat",
                "max_tokens": prof.context_window,
                "max_input_tokens": prof.context_window,
                "max_output_tokens": prof.context_window,
                "supports_function_calling": True,
            }
            for name, prof in profiles.items()
        }
    )


def register_prices(prices: dict[str, tuple[float, float, float | None]]) -> None:
    """Prices a project gives real models (USD per million input, output and cached input
    tokens) go into litellm's cost map, so litellm's own cost functions (cached tokens
    included) agree with tower's reservations. A local or newer model litellm does not know
    is then priced instead of counted as $0."""
    if not prices:
        return
    litellm = load_litellm()
    entries: dict[str, dict[str, Any]] = {}
    for model, (inp, out, cached) in prices.items():
        try:
            provider = litellm.get_llm_provider(model)[1]
        except Exception:
            provider = "openai"
        entry: dict[str, Any] = {
            "input_cost_per_token": inp / 1e6,
            "output_cost_per_token": out / 1e6,
            "litellm_provider": provider,
            "mode": "chat",
            "supports_function_calling": True,
        }
        if cached is not None:
            entry["cache_read_input_token_cost"] = cached / 1e6
        entries[model] = entry
        bare = model.split("/", 1)[1] if "/" in model else None
        if bare and bare not in litellm.model_cost:
            entries[bare] = entry  # litellm looks a prefixed name up without its prefix too
    litellm.register_model(entries)
    _priced.cache_clear()


# --- tokens and prices -------------------------------------------------------------------


def exact_tokenizer(model: str) -> bool:
    """Whether litellm counts this model's tokens exactly: OpenAI's own models (tiktoken,
    bundled with litellm, no network). Any other tokenizer is unknown to tower."""
    litellm = load_litellm()
    bare = model.removeprefix("openai/").removeprefix("azure/")
    info = litellm.model_cost.get(bare) or litellm.model_cost.get(model) or {}
    return info.get("litellm_provider") in ("openai", "azure")


def prompt_bound(
    model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, exact: bool
) -> int:
    """Prompt tokens a provider can count for this request, at most: what reservations use.

    With a tokenizer litellm knows exactly, its count (plus the chat format's per-message
    tokens). Otherwise a bound no byte-level BPE tokenizer can exceed: every token covers at
    least one UTF-8 byte, so the request's bytes (as JSON, which only adds bytes) plus a few
    template tokens per message bound it, whatever the provider's tokenizer (CJK text counts
    about four times chars/4, which is how caps overshot by a third).
    """
    if exact:
        try:
            counted = load_litellm().token_counter(model=model, messages=messages, tools=tools)
            return int(counted) + 4 * len(messages) + 8
        except Exception:
            pass  # an unusual message shape: fall back to the bound
    data = json.dumps(messages, ensure_ascii=False)
    if tools:
        data += json.dumps(tools, ensure_ascii=False)
    return len(data.encode("utf-8", "surrogatepass")) + 8 * len(messages) + 16


def counted_tokens(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    text: str,
    tokenizer: Any = None,
) -> tuple[int, int]:
    """(prompt, completion) tokens by the model's tokenizer: the project's (`tokenizer =` a
    Hugging Face tokenizer.json), else litellm's for the model (tiktoken when it knows no
    other). For providers that send no usage; recorded as estimated."""
    litellm = load_litellm()
    custom = {"custom_tokenizer": tokenizer} if tokenizer is not None else {}
    try:
        prompt = int(litellm.token_counter(model=model, messages=messages, tools=tools, **custom))
    except Exception:
        prompt = estimate_tokens(messages, tools)
    try:
        completion = int(litellm.token_counter(model=model, text=text, **custom)) if text else 0
    except Exception:
        completion = text_tokens(text)
    return prompt, completion


def load_tokenizer(path: str) -> Any:
    """A Hugging Face tokenizer.json, or the tokenizer inside a GGUF model file, as
    litellm's token_counter takes it; ValueError saying why when the file is neither."""
    litellm = load_litellm()
    try:
        if path.lower().endswith(".gguf"):
            from tower.core.gguf import tokenizer_json_from_gguf

            text = tokenizer_json_from_gguf(path)  # its ValueErrors name the file
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json (not UTF-8)") from None
    try:
        return litellm.create_tokenizer(text)
    except Exception as exc:
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({exc})") from None


def skip_success_logging(resp: Any) -> None:
    """litellm ends each stream by scheduling its success handlers (a logging payload, a
    cost, a redaction pass, then a loop over callbacks; ~0.3 ms a call). tower registers no
    litellm callback and prices calls itself, so the stream is marked as one whose
    completion the caller handles (the hook litellm's proxy uses for the same purpose)."""
    logging_obj = getattr(resp, "logging_obj", None)
    if logging_obj is not None:  # read with getattr(…, None) at the stream's end
        logging_obj._on_deferred_stream_complete = True


def provider_sent_usage(resp: Any) -> bool:
    """Whether the provider itself reported usage in this stream. litellm fills in a usage
    chunk of its own when the provider sends none (llama.cpp's server does not), counted with
    whatever tokenizer it guesses; its stream wrapper keeps the provider's raw chunks."""
    chunks = getattr(resp, "chunks", None)
    if not isinstance(chunks, list):
        return True  # not litellm's stream wrapper: its usage is the provider's
    return any(getattr(c, "usage", None) is not None for c in chunks)


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    # What a prompt token read from the provider's cache costs, and one written to it
    # (Anthropic's breakpoints bill the write at a premium); None: the plain input price.
    cached_per_token: float | None = None
    cache_write_per_token: float | None = None

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached: int = 0, written: int = 0
    ) -> float:
        """The call's price; `cached` and `written` are among the prompt tokens."""
        plain = max(prompt_tokens - cached - written, 0)
        return (
            plain * self.input_per_token
            + cached * self._cached
            + written * self._written
            + completion_tokens * self.output_per_token
        )

    def saved_by_caching(self, cached: int, written: int) -> float:
        """What the provider's prompt cache saved on a call, against every prompt token at
        the plain input price: reads are cheaper, writes may cost more (a negative share)."""
        return cached * (self.input_per_token - self._cached) + written * (
            self.input_per_token - self._written
        )

    @property
    def _cached(self) -> float:
        return self.input_per_token if self.cached_per_token is None else self.cached_per_token

    @property
    def _written(self) -> float:
        w = self.cache_write_per_token
        return self.input_per_token if w is None else w


def model_price(model: str) -> Price | None:
    """Per-token prices from litellm's cost map, or None when litellm does not know them."""
    litellm = load_litellm()
    info = litellm.model_cost.get(model)
    if info is None:
        try:
            info = litellm.get_model_info(model)
        except Exception:
            return None
        # Some providers' fallbacks invent zero prices for names the map lacks (any
        # `claude-…`, any `ollama/…`): only an entry of the map itself is a known price.
        if info.get("key") not in litellm.model_cost:
            return None
    inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if inp is None or out is None:
        return None
    cached, written = (
        info.get("cache_read_input_token_cost"),
        info.get("cache_creation_input_token_cost"),
    )
    return Price(
        float(inp),
        float(out),
        float(cached) if cached is not None else None,
        float(written) if written is not None else None,
    )


def batch_price(model: str) -> Price | None:
    """Per-token prices through the provider's batch API: the cost map's `…_batches` prices
    (half the usual, for a sim model); None when the map has none."""
    litellm = load_litellm()
    if is_sim(model):
        usual = model_price(model)
        if usual is None:
            return None
        half = None if usual.cached_per_token is None else usual.cached_per_token / 2
        return Price(usual.input_per_token / 2, usual.output_per_token / 2, half)
    bare = model.split("/", 1)[1] if "/" in model else model
    info = litellm.model_cost.get(model) or litellm.model_cost.get(bare) or {}
    inp, out = info.get("input_cost_per_token_batches"), info.get("output_cost_per_token_batches")
    if inp is None or out is None:
        return None
    cached = info.get("cache_read_input_token_cost_batches")
    return Price(float(inp), float(out), float(cached) if cached is not None else None)


def context_window(model: str) -> int | None:
    """The prompt tokens litellm's model info says the model takes (None: unknown)."""
    litellm = load_litellm()
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return None
    window = info.get("max_input_tokens") or info.get("max_tokens")
    return int(window) if isinstance(window, int) and window > 0 else None


# --- model checks ------------------------------------------------------------------------

# Variables some providers list as "missing" although they have working defaults.
_OPTIONAL_ENV = {"OLLAMA_API_BASE", "HOSTED_VLLM_API_BASE", "LM_STUDIO_API_BASE"}

# Providers whose every model litellm's cost map lists: a name it does not know there is a
# typo (or a model newer than this litellm). Every other provider (ollama, hosted_vllm,
# lm_studio, azure deployments, bedrock ARNs, openrouter, …) serves names of the user's own.
_CATALOGUED = frozenset(
    {"openai", "text-completion-openai", "anthropic", "gemini", "mistral", "deepseek", "xai"}
)
# Local servers litellm has no default address for.
_NEEDS_BASE = {"hosted_vllm": "HOSTED_VLLM_API_BASE", "lm_studio": "LM_STUDIO_API_BASE"}
# Modes of the map's entries that can answer a chat completion (others are never suggested).
_CHAT_MODES = frozenset({"chat", "responses", "completion", None})


def _provider_base_set(provider: str) -> bool:
    """True when the environment sends this provider's calls to another server (a proxy or
    a local one, e.g. OPENAI_BASE_URL), which may serve any model name."""
    stem = provider.upper().replace("-", "_")
    return bool(os.environ.get(f"{stem}_API_BASE") or os.environ.get(f"{stem}_BASE_URL"))


def _is_known(litellm: Any, model: str, provider: str, name: str) -> bool:
    """Whether litellm's cost map has the model, with or without its provider prefix."""
    cost = litellm.model_cost
    if model in cost or f"{provider}/{name}" in cost:
        return True
    info = cost.get(name)
    if info is None:
        return False
    owner = str(info.get("litellm_provider", ""))
    return owner == provider or owner.startswith(f"{provider}-")


def _suggest(litellm: Any, model: str, provider: str | None) -> str | None:
    """The closest name litellm knows, written as the user wrote theirs (prefix or not)."""
    import difflib

    prefix = f"{provider}/" if provider and model.startswith(f"{provider}/") else ""
    names = set()
    for key, info in litellm.model_cost.items():
        if not isinstance(info, dict) or info.get("mode") not in _CHAT_MODES:
            continue
        owner = str(info.get("litellm_provider", ""))
        if provider is not None and owner != provider:
            continue
        bare = key.removeprefix(f"{owner}/") if owner else key
        names.add(prefix + bare if provider is not None else key)
    match = difflib.get_close_matches(model, sorted(names), n=1, cutoff=0.75)
    return match[0] if match else None


def _unknown(model: str, suggestion: str | None, fallback: str) -> str:
    if suggestion is not None:
        return f"unknown model {model!r} (did you mean {suggestion!r}?)"
    return f"unknown model {model!r}{fallback}"


def check_model(
    model: str, api_base: str | None = None, api_key_env: str | None = None
) -> str | None:
    """None if the model can be called here, else a one-line reason (unknown, missing key).

    The name is checked against litellm's own model list whether or not a key is set, with
    the closest known name as a hint. A model at an api_base (a local server, a proxy), or on
    a provider that serves names of the user's choosing (ollama/, hosted_vllm/, azure/, …),
    may have any name. With an api_base the provider's usual key is not required; a named
    api_key_env must be set.
    """
    if api_key_env and not os.environ.get(api_key_env):
        return f"model {model!r} needs the environment variable {api_key_env} (api_key_env)"
    if is_sim(model):
        return (
            None
            if model in SIM_PROFILES
            else (f"unknown sim model {model!r} (expected one of {', '.join(SIM_PROFILES)})")
        )
    litellm = load_litellm()
    try:
        name, provider, *_ = litellm.get_llm_provider(model)
    except Exception:
        return _unknown(
            model,
            _suggest(litellm, model, None),
            ": litellm cannot tell its provider "
            "(use a known name like 'gpt-4o-mini' or a prefix like 'anthropic/…', 'ollama/…')",
        )
    if not (
        api_base
        or provider not in _CATALOGUED
        or name.startswith("ft:")  # a fine-tuned model: the provider names it
        or _provider_base_set(provider)
        or _is_known(litellm, model, provider, name)
    ):
        return _unknown(
            model,
            _suggest(litellm, model, provider),
            f": litellm knows no {provider} model of that name (a local server, or a model "
            f"newer than litellm? give it an api_base in [models.{json.dumps(model)}])",
        )
    base_var = _NEEDS_BASE.get(provider)
    if base_var and not api_base and not os.environ.get(base_var):
        return (  # without one litellm would send the call to api.openai.com
            f"model {model!r} needs its server's address: api_base in "
            f"[models.{json.dumps(model)}] or the environment variable {base_var}"
        )
    if api_base or api_key_env:
        return None  # a local server, or the key comes from the named variable
    try:
        env = litellm.validate_environment(model)
    except Exception:
        return None
    missing = [k for k in env.get("missing_keys", []) if k not in _OPTIONAL_ENV]
    if missing:
        return f"model {model!r} needs the environment variable {' and '.join(missing)}"
    return None


# --- one streamed call -------------------------------------------------------------------


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class CallResult:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    seconds: float = 0.0
    cost_usd: float | None = None  # litellm's price of the usage; None when it has none
    cached_tokens: int = 0  # prompt tokens read from the provider's cache (cheaper)
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic bills a premium)
    reasoning_tokens: int = 0  # completion tokens spent thinking (billed as output)
    usage_estimated: bool = False  # the provider sent no usage: tower counted the tokens

    def assistant_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            msg["tool_calls"] = [tc.as_message() for tc in self.tool_calls]
        return msg


class CallError(Exception):
    """A failed model call, already read: a one-line message and whether a retry may help."""

    def __init__(
        self,
        message: str,
        retryable: bool,
        context_window: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.context_window = context_window  # the prompt no longer fits this model
        self.retry_after = retry_after  # seconds the provider asked us to wait (Retry-After)


class CallLost(CallError):
    """A call whose answer was lost with the worker process running it: the provider may
    have answered (and billed) it, so it is booked at its reservation, as a crash's is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def _retry_after(exc: BaseException) -> float | None:
    """The provider's Retry-After, in seconds, when its response carried one."""
    for holder in (exc, getattr(exc, "original_exception", None)):
        for headers in (
            getattr(holder, "litellm_response_headers", None),
            getattr(getattr(holder, "response", None), "headers", None),
            getattr(holder, "headers", None),
        ):
            if not headers:
                continue
            try:
                value = headers.get("retry-after")
                if value is not None:
                    return max(float(value), 0.0)
            except (TypeError, ValueError, AttributeError):
                return None
    return None


# How providers say "the prompt is too long", often as a plain HTTP 400.
_CONTEXT_HINTS = (
    "context length",
    "context window",
    "context_length_exceeded",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "exceeds the model's",
    "reduce the length of the messages",
    "maximum number of tokens",
)

_STATUS_LABEL = {
    400: "bad request",
    401: "authentication failed",
    403: "permission denied",
    404: "model not found",
    408: "request timed out",
    429: "rate limited",
    500: "provider error",
    502: "bad gateway",
    503: "provider overloaded",
    504: "gateway timeout",
}


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and every one behind it (causes, contexts, litellm's originals)."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out) or len(out) > 32:
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "original_exception", None)]
    return out


# Lower-level failures that mean no server answered at all, whatever status litellm gave
# them afterwards (it reports a refused connection as "InternalServerError", 500).
_UNREACHABLE = {errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network unreachable"}


def _connect_failure(exc: BaseException) -> tuple[str, bool] | None:
    """Why the call never reached a server, and whether a retry may help; None if it did."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused", True
    for e in chain:
        if isinstance(e, socket.gaierror) or type(e).__name__ == "ClientConnectorDNSError":
            # "Temporary failure in name resolution" may pass; an unknown host will not.
            return "host not found", getattr(e, "errno", None) == socket.EAI_AGAIN
    for e in chain:
        if isinstance(e, OSError) and e.errno in _UNREACHABLE:
            return _UNREACHABLE[e.errno], True
    if names & {"ConnectTimeout", "ConnectionTimeoutError"}:
        return "connection timed out", True
    if names & {"ConnectError", "ClientConnectorError"}:
        return "connection failed", True
    return None


def _address(exc: BaseException, api_base: str | None) -> str:
    """Where the call went: the api_base, else the URL or host the client tried."""
    if api_base:
        return api_base
    for e in reversed(_chain(exc)):  # the innermost first: litellm's own carry dummy URLs
        if type(e).__module__.startswith("litellm"):
            continue
        try:  # httpx's `request` property raises RuntimeError when it has none
            url = getattr(getattr(e, "request", None), "url", None)  # httpx and openai errors
            if url is not None:
                return f"{url.scheme}://{url.netloc.decode()}" if url.netloc else str(url)
        except Exception:
            pass
        host, port = getattr(e, "host", None), getattr(e, "port", None)  # aiohttp's
        if isinstance(host, str) and host:
            return f"{host}:{port}" if port else host
    return "the provider"


def read_error(exc: BaseException, model: str, api_base: str | None = None) -> CallError:
    """Turns whatever litellm raised into a one-line CallError (`api_base`: where it went)."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, TimeoutError):
        return CallError(f"{model}: no answer within the call timeout", retryable=True)
    unreachable = _connect_failure(exc)
    if unreachable is not None:
        why, retryable = unreachable
        return CallError(f"{model}: cannot connect to {_address(exc, api_base)} ({why})", retryable)
    name = type(exc).__name__
    original = getattr(exc, "original_exception", None)
    if original is not None:
        name = type(original).__name__
    text = str(getattr(exc, "message", None) or exc)
    text = text.split(" Original exception")[0].splitlines()[0] if text else name
    while text.startswith("litellm."):
        text = text.split(": ", 1)[-1]
    if " - " in text:
        text = text.split(" - ", 1)[1]
    status = getattr(exc, "status_code", None)
    full = str(exc).lower()
    # A 429 is a rate limit, whatever its wording (Bedrock says "Too many tokens").
    limited = status == 429 or "RateLimit" in name
    if not limited and ("ContextWindow" in name or any(h in full for h in _CONTEXT_HINTS)):
        return CallError(
            f"{model}: context window exceeded ({text[:160]})", retryable=False, context_window=True
        )
    if "No module named" in text:
        return CallError(f"{model}: litellm is missing a module: {text[:160]}", retryable=False)
    if isinstance(status, int):
        label = _STATUS_LABEL.get(status, f"HTTP {status}")
        retryable = status in (408, 409, 429) or status >= 500
        return CallError(
            f"{model}: {label} ({status}): {text[:200]}", retryable, retry_after=_retry_after(exc)
        )
    retryable = any(k in name for k in ("Timeout", "APIConnection", "ServiceUnavailable"))
    return CallError(f"{model}: {name}: {text[:200]}", retryable)


# Providers that cache a prompt only up to the breakpoints the request marks (cache_control,
# which litellm passes through); the others cache on their own (OpenAI) or not at all.
_BREAKPOINT_PROVIDERS = frozenset({"anthropic"})
_CLAUDE_HOSTS = frozenset({"bedrock", "bedrock_converse", "vertex_ai", "vertex_ai_beta"})
_EPHEMERAL = {"type": "ephemeral"}


@functools.lru_cache(maxsize=256)
def takes_breakpoints(model: str) -> bool:
    """Whether calls to this model should mark their cacheable prefix (asked once a model)."""
    if is_sim(model):
        return False
    try:
        provider = load_litellm().get_llm_provider(model)[1]
    except Exception:
        return False
    return provider in _BREAKPOINT_PROVIDERS or (
        provider in _CLAUDE_HOSTS and "claude" in model.lower()
    )


def with_breakpoints(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Copies of the request with the stable prefix marked cacheable: the last system
    message and the last tool definition (a breakpoint caches everything before it, and
    tools come first in the prompt). The conversation itself is not touched."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "system":
            out[i] = {**out[i], "cache_control": _EPHEMERAL}
            break
    if tools:
        tools = [*tools[:-1], {**tools[-1], "cache_control": _EPHEMERAL}]
    return out, tools


@functools.lru_cache(maxsize=256)
def _priced(model: str) -> bool:
    """Whether the cost map prices this (real) model; asked once per model, not per call."""
    return model_price(model) is not None


def usage_cost(model: str, usage: Any) -> float | None:
    """What litellm's cost map says this usage costs (cached and reasoning tokens included),
    the same function `litellm.completion_cost` uses; None when it knows no price."""
    litellm = load_litellm()
    if not _priced(model):
        return None  # litellm would price it at an invented $0
    try:
        prompt, completion = litellm.cost_per_token(model=model, usage_object=usage)
    except Exception:
        return None
    return float(prompt) + float(completion)


def read_usage(result: CallResult, usage: Any, model: str) -> None:
    """Token counts and cost from a provider's usage object (streamed or not: the same)."""
    result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    written = getattr(details, "cache_write_tokens", None) or getattr(
        details, "cache_creation_tokens", None
    )
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
    result.cached_tokens = int(cached or 0)
    result.cache_write_tokens = int(written or 0) if isinstance(written, int) else 0
    result.reasoning_tokens = int(reasoning or 0)
    # Sim prices are flat per-token rates registered in the same map: the caller prices
    # them directly, which spares litellm's cost machinery (~0.1 ms a call) on the hot path.
    if (result.prompt_tokens or result.completion_tokens) and not is_sim(model):
        result.cost_usd = usage_cost(model, usage)


async def stream_call(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    max_tokens: int,
    timeout_s: float,
    on_text: Callable[[str], None],
    metadata: dict[str, Any] | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    lag: LoopLag | None = None,
    tokenizer: Any = None,
    prompt_cache: bool = True,
    temperature: float | None = None,
) -> CallResult:
    """One streamed completion, under a hard timeout; raises CallError on any failure.

    With `lag`, the timeout counts the provider's seconds: time the event loop was stalled by
    tower's own load does not count against the call (see admission.provider_timeout).
    `prompt_cache`: mark the prefix cacheable where the provider takes breakpoints."""
    litellm = load_litellm()
    sim = is_sim(model)
    if prompt_cache and not sim and takes_breakpoints(model):
        messages, tools = with_breakpoints(messages, tools)
    result = CallResult()
    started = time.monotonic()
    parts: list[str] = []
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    usage: Any = None
    reported = False
    try:
        async with provider_timeout(timeout_s, lag):
            resp = await litellm.acompletion(
                model=model,
                messages=messages,
                tools=tools or None,
                max_tokens=max_tokens,
                stream=True,
                # A sim's stream always ends with its usage: asking litellm to pass usage
                # chunks through costs a copy and a rebuild of that chunk (~0.6 ms); it is
                # read from the stream's end instead (below). Real providers need the ask.
                **({} if sim else {"stream_options": {"include_usage": True}}),
                metadata=metadata or {},
                num_retries=0,
                **({} if temperature is None else {"temperature": temperature}),
                **({"api_base": api_base} if api_base else {}),
                **({"api_key": api_key} if api_key else {}),
            )
            skip_success_logging(resp)
            chunk = None
            async for chunk in resp:
                chunk_usage = getattr(chunk, "usage", None)
                if chunk_usage is not None:
                    usage = chunk_usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.finish_reason:
                    result.finish_reason = choice.finish_reason
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    parts.append(delta.content)
                    on_text(delta.content)
                for tc in delta.tool_calls or ():
                    idx = tc.index or 0
                    if tc.id:
                        ids[idx] = tc.id
                    fn = tc.function
                    if fn is not None:
                        if fn.name:
                            names[idx] = fn.name
                        if fn.arguments:
                            calls.setdefault(idx, []).append(fn.arguments)
                        else:
                            calls.setdefault(idx, [])
            if usage is None and sim and chunk is not None:
                usage = (getattr(chunk, "_hidden_params", None) or {}).get("usage")
            reported = usage is not None and (sim or provider_sent_usage(resp))
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # litellm raises many unrelated types
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise read_error(exc, model, api_base) from None
    result.text = "".join(parts)
    for idx in sorted(set(calls) | set(names)):
        result.tool_calls.append(
            ToolCall(ids.get(idx, f"call_{idx}"), names.get(idx, ""), "".join(calls.get(idx, [])))
        )
    if not reported and not is_sim(model):
        # No usage from the provider (llama.cpp's server, some proxies): count with the
        # model's tokenizer, price that, and say the figures are tower's own count.
        said = result.text + "".join(c.name + c.arguments for c in result.tool_calls)
        prompt, completion = counted_tokens(model, messages, tools, said, tokenizer)
        usage = litellm.Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        result.usage_estimated = True
    if usage is not None:
        read_usage(result, usage, model)
    if not result.prompt_tokens:
        result.prompt_tokens = estimate_tokens(messages, tools)
    if not result.completion_tokens:
        result.completion_tokens = text_tokens(result.text) + sum(
            text_tokens(c.arguments) for c in result.tool_calls
        )
    result.seconds = time.monotonic() - started
    return result
