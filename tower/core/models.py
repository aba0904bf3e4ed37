"""The project's models as tower calls them: prices, token bounds, tokenizers, endpoints.

Registered with litellm once per session (a project's own prices, the sim profiles), then
asked per call: what a prompt may cost (its token bound at the model's price), which
tokenizer counts for a provider that sends no usage, where the endpoint is, and what a
sim model is told. A reload of tower.toml swaps the project and forgets what depended on it.
"""

from __future__ import annotations

from typing import Any

from tower.core import llm
from tower.core.project import Project, ProjectError
from tower.core.run import ThreadRun
from tower.core.simprofiles import SIM_PROFILES, is_sim
from tower.core.tokens import estimate_tokens


def register_with_litellm(reg: dict[str, Any]) -> None:
    """Puts a registration's sim profiles and prices in this process's litellm cost map (a
    real model the project prices: litellm's cost functions agree with tower's)."""
    sim = reg.get("sim") or {}
    llm.register_sim_prices(
        {name: prof.with_overrides(sim.get(name) or {}) for name, prof in SIM_PROFILES.items()}
    )
    llm.register_prices({m: (p[0], p[1], p[2]) for m, p in (reg.get("prices") or {}).items()})


class Models:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.tokenizers: dict[str, Any] = {}  # the project's own, for usage-less providers
        self._prices: dict[str, llm.Price | None] = {}
        self._exact: dict[str, bool] = {}
        self._sim: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, int | None] = {}
        self._batch: dict[str, llm.Price | None] = {}

    def registration(self) -> dict[str, Any]:
        """What litellm must be told for this project, as plain data: each sim model's
        overrides, the prices the project gives real models, and its tokenizer files. A
        worker process (core/callworkers.py) is told the same."""
        p = self.project
        prices: dict[str, tuple[float, float, float | None]] = {}
        for model in p.all_models():
            ms = p.model_settings(model)
            if not is_sim(model) and ms.input_usd_per_mtok is not None:
                out = ms.output_usd_per_mtok
                prices[model] = (
                    ms.input_usd_per_mtok,
                    out if out is not None else ms.input_usd_per_mtok,
                    ms.cached_input_usd_per_mtok,
                )
        tokenizers = {}
        for model in p.all_models():
            path = p.tokenizer_path(model)
            if path is not None:
                tokenizers[model] = str(path)
        return {
            "sim": {name: p.model_settings(name).sim_overrides() for name in SIM_PROFILES},
            "prices": prices,
            "tokenizers": tokenizers,
        }

    def register(self) -> None:
        """Tells litellm the project's prices and sim profiles, loads its tokenizers and
        looks every model's price up (litellm must be loaded: `llm.load_litellm`)."""
        reg = self.registration()
        register_with_litellm(reg)
        for model, path in reg["tokenizers"].items():
            if model not in self.tokenizers:
                try:
                    self.tokenizers[model] = llm.load_tokenizer(path)
                except ValueError as exc:  # changed since the project was checked
                    raise ProjectError([f"models.{model}.tokenizer: {exc}"]) from None
        for model in self.project.all_models():
            self._prices[model] = llm.model_price(model)

    def reload(self, project: Project) -> None:
        self.project = project
        self._sim.clear()
        self._windows.clear()
        self._batch.clear()

    def price(self, model: str) -> llm.Price | None:
        """Its per-token prices (None: litellm knows none and the project gives none)."""
        if model not in self._prices:
            self._prices[model] = llm.model_price(model)
        return self._prices[model]

    def prompt_bound(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tools_chars: int,
    ) -> int:
        """The prompt tokens a call is reserved for: exact for sim models (they count with
        the same estimate), the tokenizer's count where litellm knows it exactly (an OpenAI
        model at OpenAI), else a bound no tokenizer exceeds (see llm.prompt_bound)."""
        if is_sim(model):
            return estimate_tokens(messages, tools, tools_chars)
        exact = self._exact.get(model)
        if exact is None:
            # A local server may serve any model under an OpenAI name: only OpenAI's own
            # endpoint is known to tokenize like tiktoken.
            local = self.project.model_settings(model).api_base is not None
            exact = self._exact[model] = not local and llm.exact_tokenizer(model)
        return llm.prompt_bound(model, messages, tools, exact)

    def batch_price(self, model: str) -> llm.Price | None:
        """What the model costs through its provider's batch API: litellm's batch prices,
        half the sim's (as OpenAI's and Anthropic's batches are), else its usual price."""
        if model not in self._batch:
            self._batch[model] = llm.batch_price(model) or self.price(model)
        return self._batch[model]

    def context_window(self, model: str) -> int | None:
        """The prompt tokens the model takes: the project's `context_window`, a sim model's
        profile, else litellm's model info (None when nobody knows it)."""
        if model in self._windows:
            return self._windows[model]
        window = self.project.model_settings(model).context_window
        if window is None and is_sim(model):
            window = SIM_PROFILES[model].context_window if model in SIM_PROFILES else None
        elif window is None:
            window = llm.context_window(model)
        self._windows[model] = window
        return window

    def compaction_metadata(self, th: ThreadRun, model: str) -> dict[str, Any] | None:
        """What a sim model is told when it writes a compaction summary."""
        if not is_sim(model):
            return None
        return {
            "tower_sim": {
                "compaction": True,
                "seed": self.project.project.seed,
                "thread": th.id,
                "profile": self.project.model_settings(model).sim_overrides(),
            }
        }

    def endpoint(self, model: str) -> dict[str, Any]:
        """How a call reaches the model: its server and key when not the provider's
        default, and `prompt_cache=False` when the project turns prompt caching off."""
        out: dict[str, Any] = dict(self.project.model_settings(model).endpoint())
        if not self.project.cache.prompt:
            out["prompt_cache"] = False
        return out

    def tokenizer(self, model: str) -> Any:
        return self.tokenizers.get(model)

    def sim_metadata(self, th: ThreadRun, attempt: int) -> dict[str, Any] | None:
        """What a sim model is told with the call: the thread's script, seed and profile."""
        if not is_sim(th.model):
            return None
        overrides = self._sim.get(th.model)
        if overrides is None:
            overrides = self._sim[th.model] = self.project.model_settings(th.model).sim_overrides()
        return {
            "tower_sim": {
                "script": th.script,
                "seed": self.project.project.seed,
                "thread": th.id,
                "attempt": attempt,
                "profile": overrides,
                # `[cache] prompt = false`: the sim's automatic cache is off too (a baseline).
                **({} if self.project.cache.prompt else {"cache": False}),
                # A compaction changed the prompt from this message on: no cache past it.
                **({} if th.cache_break is None else {"cache_upto": th.cache_break}),
                # A sub-agent without a script reads the file its prompt names and reports.
                **({"sub_agent": True} if th.parent is not None else {}),
            }
        }
