"""OpenAI chat completions -- the official API or any OpenAI-compatible server -- as an LLMClient.

``base_url: null`` is the official API; any OpenAI-compatible server works by URL (vLLM, Ollama,
llama.cpp server, OpenRouter ...).  The ``openai`` SDK is imported on first use.  Limits, retries,
the response cache and the counters are shared with the other HTTP backends (:mod:`bench.llm.client`);
requests are built and parsed by :mod:`bench.llm.providers.openai`.

Generation (``generate``)
    One chat completion per request; k samples of a prompt are k requests told apart by
    ``sample_index`` (their own cache entries, and their own ``seed`` on servers that honour it).
    ``top_logprobs > 0`` asks for ``logprobs=True, top_logprobs=k`` (the official API allows k <= 20);
    equal token texts among the alternatives are merged (probabilities summed).  Usage includes
    ``prompt_tokens_details.cached_tokens`` (prompt-cache reads).

``assistant_prefix`` (the ``prefill`` field)
    * ``fold`` -- the official API cannot continue a partial assistant message, so the prefix is
      folded into the last user message as: ``<content>\\n\\nBegin your reply with exactly this text,
      then continue it:\\n<prefix>``; the echoed prefix is removed from the reply (and its tokens from
      the logprobs).  If the model does not echo it, the reply is returned as is.
    * ``continue_final_message`` -- vLLM: the prefix is sent as a trailing assistant message with
      ``continue_final_message=true, add_generation_prompt=false`` and the reply continues it.
    * ``trailing_assistant`` -- servers that continue a trailing assistant message on their own
      (Ollama, llama.cpp server, OpenRouter for most models).
    * ``auto`` -- ``continue_final_message`` when ``prompt_logprobs`` (a vLLM server), else ``fold``.
    In every mode ``Generation.text`` is the continuation only, like the local backend.

Prompt-logprob slots (``slot_distributions``; vLLM only, ``prompt_logprobs: true``)
    The prompt is ``messages[:-1]`` rendered with ``chat_template`` and a generation prompt, then the
    last (assistant) message's content, left open -- the same layout as the local backend.  One
    ``/v1/completions`` request per slot request with ``echo=true, logprobs=k, max_tokens=1`` and
    vLLM's ``prompt_logprobs=k``: the echoed ``tokens`` place every slot (a slot must start a server
    token, else ``ValueError``), ``choices[0].prompt_logprobs[i]`` (token id -> ``{logprob, rank,
    decoded_token}``) is the distribution at the slot (the legacy ``top_logprobs[i]`` as fallback).
    Values the tokenizer splits (SmolLM2/Qwen write "10" as "1","0") are chained with one more batched
    request (a list of prompts, each cut at a slot plus the first piece): P("10") += P("1")·P("0" | …"1")
    and P("1") = P("1")·(1 − P(letter/digit next | …"1")).  Only the top ``k`` tokens are visible at
    each position and each chaining step (``SlotRequest.top_k``: the simulator's recorded k; else
    ``slot_top_k``): mass outside them counts as 0 -- exactly what the in-process backend computes for the
    same ``top_k`` (:mod:`bench.simulators.topk_values`, the one definition).  ``slot_top_k`` is the most
    the server returns per position (its ``--max-logprobs``, 20 by default): a request for more is refused.
    The smallest visible mass is recorded in ``meta``.  ``chat_template``: ``chatml`` (Qwen, SmolLM2), ``llama3``,
    ``plain`` or a Jinja template string (as in a tokenizer's ``chat_template``) -- use the served
    model's own template for faithful prompts (presets add no default system prompt).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.llm.cache import cache_key
from bench.llm.errors import ErrorInfo, describe_sdk_error
from bench.llm.http_backend import HTTPBackend, check_common_fields, raw_json
from bench.llm.providers.openai import (
    FOLD_INSTRUCTION,
    chat_request,
    completions_request,
    parse_chat,
    parse_completions,
)
from bench.llm.text import apply_stops, cut_tokens, merge_top
from bench.llm.types import CostEstimate, Job, Outcome
from bench.protocols import (
    VALUE_STRINGS,
    Capability,
    ChatMessage,
    Generation,
    GenerationRequest,
    SlotRequest,
    SlotResult,
    TokenLogprobs,
)
from bench.simulators.topk_values import read_k, value_probabilities, visible_top, wanted_pieces

OFFICIAL_BASE_URL = "https://api.openai.com/v1"
PREFILL_MODES = ("auto", "fold", "continue_final_message", "trailing_assistant")

# name -> (one message, generation prompt); BOS is left to the server (vLLM adds it when the tokenizer does).
CHAT_TEMPLATES: dict[str, tuple[str, str]] = {
    "chatml": ("<|im_start|>{role}\n{content}<|im_end|>\n", "<|im_start|>assistant\n"),
    "llama3": (
        "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "plain": ("{role}: {content}\n\n", "assistant: "),
}


def render_chat(template: str, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with a preset name or a Jinja chat template (HF ``chat_template`` style)."""
    if template in CHAT_TEMPLATES:
        one, generation_prompt = CHAT_TEMPLATES[template]
        text = "".join(one.format(role=m.role, content=m.content) for m in messages)
        return text + (generation_prompt if add_generation_prompt else "")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat_template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=add_generation_prompt,
        bos_token="",
        eos_token="",
    )


@dataclass(frozen=True)
class OpenAIChatModel(HTTPBackend):
    """An OpenAI(-compatible) chat model.  Cheap to construct: no client, no key read, no network.

    ``api_key_env`` names the environment variable holding the key (``null``: the server needs none,
    e.g. a local vLLM/Ollama); the key itself is read when the client is first needed and lives only
    inside the SDK client -- never in a field, a log line, the cache or a result.
    ``cache_dir``: the response cache (``null``: ``$NEURONBENCH_CACHE/llm``); ``cache: false`` turns it
    off.  ``prices``: USD per 1M tokens ``{input, cached_input, output}`` (``null``: genai-prices' list
    prices, free for an unlisted model on a local server, else unknown: :mod:`bench.llm.pricing`).
    ``seed``: sent per sample as ``seed*1000003 + sample_index``.
    ``batch: true`` sends ``generate``'s cache misses through the Batch API (:mod:`bench.llm.batch`):
    polled every ``batch_poll_s``, given up after ``batch_timeout_s`` (the run stops; a re-run resumes),
    billed at prices times ``batch_discount``.  Prompt-logprob requests (vLLM) never go in batches.
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 6
    concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    cache_dir: str | None = None
    cache: bool = True
    batch: bool = False
    batch_poll_s: float = 30.0
    batch_timeout_s: float = 90_000.0
    batch_discount: float = 0.5
    generated_logprobs: bool = True
    prompt_logprobs: bool = False
    slot_top_k: int = 20
    chain_min_prob: float = 0.0
    chat_template: str = "chatml"
    prefill: str = "auto"
    seed: int | None = 0
    prices: dict[str, float] | None = field(default=None, hash=False)
    context_length: int | None = None
    name: str = ""
    version: int = 1

    provider_id = "openai"  # for genai-prices (a class attribute: not a config field)

    def __post_init__(self) -> None:
        check_common_fields(self)
        if self.context_length is not None and (isinstance(self.context_length, bool) or self.context_length < 16):
            raise ValueError(
                f"context_length: must be >= 16 tokens or null (ask the server), got {self.context_length}"
            )
        if self.prefill not in PREFILL_MODES:
            raise ValueError(f"prefill: {self.prefill!r} is not one of {', '.join(PREFILL_MODES)}")
        top = self.slot_top_k
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
            raise ValueError(
                f"slot_top_k: must be an integer in 1..1000 (the server's --max-logprobs; vLLM's default is 20), "
                f"got {self.slot_top_k!r}"
            )
        if not 0.0 <= self.chain_min_prob < 1.0:
            raise ValueError("chain_min_prob: must be in [0, 1)")
        if self.chat_template not in CHAT_TEMPLATES and "{" not in self.chat_template:
            raise ValueError(
                f"chat_template: {self.chat_template!r} is neither a preset ({', '.join(CHAT_TEMPLATES)}) "
                "nor a Jinja template string"
            )
        if self.prompt_logprobs and self.base_url is None:
            raise ValueError(
                "prompt_logprobs: the official OpenAI API has no prompt logprobs; set base_url to a "
                "vLLM server or set prompt_logprobs: false"
            )
        if not self.name:
            prefix = "openai" if self.base_url is None else "openai-compatible"
            object.__setattr__(self, "name", f"{prefix}/{self.model}")

    # ------------------------------------------------------------------------------------------------
    # Protocol surface
    # ------------------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.GENERATE}
        if self.generated_logprobs:
            caps.add(Capability.GENERATED_LOGPROBS)
        if self.prompt_logprobs:
            caps.add(Capability.PROMPT_LOGPROBS)
        return frozenset(caps)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Chat completions for every request (cache first); raises the first failure after the
        others finished (and were cached)."""
        plans = [self._chat_plan(r) for r in requests]
        outcomes = self.engine.run([p[0] for p in plans], batch=self._batch_mode())
        return [self._generation(r, p[1], o) for r, p, o in zip(requests, plans, outcomes, strict=True)]

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Async twin of :meth:`generate` for callers already inside an event loop."""
        plans = [self._chat_plan(r) for r in requests]
        outcomes = await self.engine.arun([p[0] for p in plans], batch=self._batch_mode())
        return [self._generation(r, p[1], o) for r, p, o in zip(requests, plans, outcomes, strict=True)]

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]:
        if not self.prompt_logprobs:
            raise NotImplementedError(
                f"{self.name} offers no prompt logprobs (the chat API has none); use a vLLM server with "
                "prompt_logprobs: true, or a local transformers model"
            )
        return _SlotRun(self, list(requests)).run()

    def estimate(self, requests: Sequence[GenerationRequest | SlotRequest]) -> CostEstimate:
        """Dry run: (calls, input tokens ~ chars/4, dollars upper bound); cache hits cost nothing."""
        keys, chars, outs = [], [], []
        for r in requests:
            if isinstance(r, SlotRequest):
                prompt, _ = self._render_slots(r)
                keys.append(self._slot_job(prompt, self.slot_k(r)).key)
                chars.append(len(prompt))
                outs.append(1)
            else:
                job, _ = self._chat_plan(r)
                keys.append(job.key)
                chars.append(sum(len(m.content) for m in r.messages) + len(r.assistant_prefix))
                outs.append(r.max_tokens)
        return self._estimate(keys, chars, outs)

    # ------------------------------------------------------------------------------------------------
    # Context length, token counts and the server's own rendering (vLLM's /tokenize)
    # ------------------------------------------------------------------------------------------------
    @property
    def max_context(self) -> int | None:
        """Prompt + completion budget in tokens: ``context_length``, else what the server reported
        (vLLM's ``max_model_len`` in ``GET /v1/models``, read by :meth:`check_server`), else unknown."""
        return self.context_length or self.server_context_length

    def check_server(self) -> list[str] | None:
        """The model list (see :meth:`HTTPBackend.check_server`), then -- where prompts are rendered
        client-side (``prompt_logprobs``) -- one comparison with the server's own rendering."""
        served = super().check_server()
        if self.prompt_logprobs and "_rendering" not in self.__dict__:
            object.__setattr__(self, "_rendering", self.check_rendering())
        return served

    def check_rendering(self, *_: Any) -> str:
        """Render a probe conversation with ``chat_template`` here and with the server's template there
        (``POST /tokenize`` with ``messages``); different token ids stop the run with one line.  Returns
        ``"equal"``, or why it could not be checked (a server without ``/tokenize``)."""
        probe = (
            ChatMessage("system", "Predict activations."),
            ChatMessage("user", "Neuron 1\nExplanation: words about rain"),
            ChatMessage("assistant", "<start>\nrain\t10\n<end>"),
            ChatMessage("user", "Neuron 2"),
        )
        ours = self._tokenize({"prompt": render_chat(self.chat_template, probe, add_generation_prompt=True)})
        theirs = self._tokenize(
            {"messages": [{"role": m.role, "content": m.content} for m in probe], "add_generation_prompt": True}
        )
        if ours is None or theirs is None:
            return "not checked: the server has no /tokenize"
        if ours["tokens"] != theirs["tokens"]:
            raise UserError(
                f"chat_template {self._template_label()!r} renders prompts differently from the server's own chat "
                f"template ({len(ours['tokens'])} vs {len(theirs['tokens'])} tokens for the same messages); set "
                "chat_template to the served model's template (a preset or its Jinja string)"
            )
        return "equal"

    def count_tokens(self, messages: Sequence[ChatMessage], assistant_prefix: str = "") -> int:
        """Prompt length in tokens: the server's count (vLLM ``/tokenize``) where it has one; else a
        conservative estimate (characters / 3: ``token<TAB>value`` lines are token-dense)."""
        text = render_chat(self.chat_template, messages, add_generation_prompt=True) + assistant_prefix
        counted = self._tokenize({"prompt": text}) if self.base_url is not None else None
        if counted is not None:
            return int(counted.get("count") or len(counted["tokens"]))
        return math.ceil(sum(len(m.content) + 16 for m in messages) / 3) + math.ceil(len(assistant_prefix) / 3)

    def _template_label(self) -> str:
        return self.chat_template if self.chat_template in CHAT_TEMPLATES else "custom"

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """``POST {server}/tokenize`` (vLLM; beside ``/v1``); None when the server has none (404 ...)."""
        import json
        import urllib.error
        import urllib.request

        if self.__dict__.get("_no_tokenize") or self.base_url is None:
            return None
        root = self.resolved_base_url.removesuffix("/v1")
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {self._api_key()}"
        request = urllib.request.Request(
            f"{root}/tokenize", data=json.dumps({"model": self.model, **body}).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout_s, 30.0)) as response:  # noqa: S310
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            object.__setattr__(self, "_no_tokenize", True)  # ask once; fall back from then on
            return None

    # ------------------------------------------------------------------------------------------------
    # SDK plumbing
    # ------------------------------------------------------------------------------------------------
    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or OFFICIAL_BASE_URL).rstrip("/")

    @property
    def prefill_mode(self) -> str:
        if self.prefill != "auto":
            return self.prefill
        return "continue_final_message" if self.prompt_logprobs else "fold"

    def _make_client(self) -> Any:
        import openai

        # max_retries=0: ours are the only retries (and are counted).  An explicit base_url also keeps
        # OPENAI_BASE_URL from silently redirecting requests the cache keys by URL.
        return openai.AsyncOpenAI(
            api_key=self._api_key(), base_url=self.resolved_base_url, max_retries=0, timeout=self.timeout_s
        )

    def _classify(self, err: BaseException) -> ErrorInfo:
        import openai

        return describe_sdk_error(err, openai)

    def _request_job(self, request: GenerationRequest) -> Job:
        return self._chat_plan(request)[0]

    def _batch_mode(self) -> Any:
        """``None``, or what the engine needs to send chat completions through the Batch API."""
        if not self.batch:
            return None
        from bench.llm.batch.openai import OpenAIBatches
        from bench.llm.batch.state import BatchMode

        return BatchMode(OpenAIBatches(self.resolved_base_url, parse_chat), self.batch_poll_s, self.batch_timeout_s)

    # ------------------------------------------------------------------------------------------------
    # Chat completions
    # ------------------------------------------------------------------------------------------------
    def _chat_plan(self, r: GenerationRequest) -> tuple[Job, str | None]:
        """The request's job, and the prefix to strip from the reply (fold mode)."""
        payload = chat_request(
            r,
            model=self.model,
            official=self.base_url is None,
            prefill_mode=self.prefill_mode,
            seed=self.seed,
            logprobs_allowed=self.generated_logprobs,
            name=self.name,
        )
        params, extra = payload.params, payload.extra
        key = cache_key(
            {
                "provider": "openai-chat",
                "base_url": self.resolved_base_url,
                "params": params,
                "extra_body": extra,
                "sample_index": r.sample_index,
            }
        )

        async def send(client: Any) -> dict[str, Any]:
            raw = await client.chat.completions.with_raw_response.create(**params, extra_body=extra or None)
            return parse_chat(await raw_json(raw))

        job = Job(
            key=key,
            send=send,
            est_tokens=payload.prompt_chars // 4 + r.max_tokens,
            request={**params, **extra},
            input_chars=payload.prompt_chars,
            max_output=r.max_tokens,
        )
        return job, payload.fold

    def _generation(self, r: GenerationRequest, fold: str | None, outcome: Outcome) -> Generation:
        if outcome.error is not None:
            raise outcome.error
        assert outcome.value is not None
        result, usage = outcome.value["result"], outcome.value.get("usage") or {}
        text = result.get("text") or ""
        tokens: list[TokenLogprobs] | None = None
        if r.top_logprobs > 0 and result.get("logprobs") is not None:
            tokens = [
                TokenLogprobs(token=t, logprob=float(lp), top=merge_top(top)) for t, lp, top in result["logprobs"]
            ]
        if fold:
            text, tokens = _strip_echoed_prefix(text, tokens, fold)
        text, tokens = apply_stops(text, tokens, r.stop)
        return Generation(text=text, logprobs=tokens, usage=self.engine.spent(usage, outcome))

    # ------------------------------------------------------------------------------------------------
    # vLLM completions with prompt logprobs
    # ------------------------------------------------------------------------------------------------
    def _render_slots(self, r: SlotRequest) -> tuple[str, int]:
        if not r.messages or r.messages[-1].role != "assistant":
            raise ValueError("a slot request's last message must be the assistant prefill holding the slots")
        head = render_chat(self.chat_template, r.messages[:-1], add_generation_prompt=True)
        return head + r.messages[-1].content, len(head)

    def slot_k(self, r: SlotRequest) -> int:
        """How many alternatives per position a slot request reads: its own ``top_k`` (the simulator's
        recorded k, the same in-process), else ``slot_top_k``; never more than the server returns."""
        k = self.slot_top_k if r.top_k is None else int(r.top_k)
        asked = read_k(k, r.top_k_taper)
        if asked > self.slot_top_k:
            taper = f" (k={k} plus the (k+1)-th that sets top_k_taper's ramp)" if asked > k else ""
            raise ValueError(
                f"{self.name}: a request reads the top {asked} logprobs{taper} but slot_top_k={self.slot_top_k} (the "
                f"server's --max-logprobs); start the server with --max-logprobs >= {asked} and set slot_top_k to match"
            )
        return k

    def _completions_job(self, prompt: str | list[str], echo: bool, kind: str, k: int) -> Job:
        params, extra = completions_request(self.model, prompt, echo, k)
        key = cache_key(
            {
                "provider": "openai-completions",
                "base_url": self.resolved_base_url,
                "kind": kind,
                "params": params,
                "extra_body": extra,
            }
        )
        chars = len(prompt) if isinstance(prompt, str) else sum(len(p) for p in prompt)

        async def send(client: Any) -> dict[str, Any]:
            raw = await client.completions.with_raw_response.create(**params, extra_body=extra or None)
            return parse_completions(await raw_json(raw))

        return Job(
            key=key,
            send=send,
            est_tokens=chars // 4 + 1,
            request={**params, **extra},
            input_chars=chars,
            max_output=1 if isinstance(prompt, str) else len(prompt),
        )

    def _slot_job(self, prompt: str, k: int) -> Job:
        return self._completions_job(prompt, echo=True, kind="slots", k=k)


class _SlotRun:
    """One ``slot_distributions`` batch: an echo request per slot request, then one chaining request
    per slot request that needs it (values split into several tokens, values that prefix others)."""

    def __init__(self, backend: OpenAIChatModel, requests: list[SlotRequest]) -> None:
        self.b = backend
        self.requests = requests

    def run(self) -> list[SlotResult]:
        b = self.b
        rendered = [b._render_slots(r) for r in self.requests]
        ks = [b.slot_k(r) for r in self.requests]
        tapers = [r.top_k_taper for r in self.requests]
        asked = [read_k(k, t) for k, t in zip(ks, tapers, strict=True)]
        first = b.engine.run([b._slot_job(prompt, n) for (prompt, _), n in zip(rendered, asked, strict=True)])
        dists: list[list[dict[str, float]]] = []
        for r, (prompt, head), outcome, k in zip(self.requests, rendered, first, ks, strict=True):
            if outcome.error is not None:
                raise outcome.error
            assert outcome.value is not None
            offsets = [head + s for s in r.slots]
            dists.append(_slot_distributions(outcome.value["result"], prompt, offsets, b.name, k, r.top_k_taper))
        # Chaining: for each slot, every visible first piece u of a value that either prefixes another
        # value ("1" of "10") or is only the start of one (a split "10").
        chains: list[list[tuple[int, str]]] = []
        for r, slot_dists in zip(self.requests, dists, strict=True):
            wanted = [
                (j, piece)
                for j, dist in enumerate(slot_dists)
                for piece in wanted_pieces(r.values, dist, b.chain_min_prob)
            ]
            chains.append(wanted)
        jobs, owners = [], []
        for i, ((prompt, head), r, wanted) in enumerate(zip(rendered, self.requests, chains, strict=True)):
            if wanted:
                prompts = [prompt[: head + r.slots[j]] + piece for j, piece in wanted]
                jobs.append(b._completions_job(prompts, echo=False, kind="chain", k=asked[i]))
                owners.append(i)
        second = b.engine.run(jobs) if jobs else []
        next_dists: dict[int, list[dict[str, float]]] = {}
        chain_outcomes: dict[int, Outcome] = {}
        for i, outcome in zip(owners, second, strict=True):
            if outcome.error is not None:
                raise outcome.error
            assert outcome.value is not None
            next_dists[i] = [_first_generated(c, ks[i], tapers[i]) for c in outcome.value["result"]["choices"]]
            chain_outcomes[i] = outcome

        results = []
        for i, r in enumerate(self.requests):
            after: list[dict[str, dict[str, float]]] = [{} for _ in dists[i]]
            for (j, piece), nd in zip(chains[i], next_dists.get(i, []), strict=True):
                after[j][piece] = nd
            probabilities = [value_probabilities(r.values, d, a) for d, a in zip(dists[i], after, strict=True)]
            visible = [sum(math.exp(lp) for lp in d.values()) for d in dists[i]]
            usage = b.engine.spent(first[i].value.get("usage") or {}, first[i])  # type: ignore[union-attr]
            if i in chain_outcomes:
                usage = usage + b.engine.spent(chain_outcomes[i].value.get("usage") or {}, chain_outcomes[i])  # type: ignore[union-attr]
            results.append(
                SlotResult(
                    probabilities=probabilities,
                    usage=usage,
                    meta={
                        "method": "vllm_completions_echo_prompt_logprobs",
                        "top_k": ks[i],
                        **({"top_k_taper": tapers[i]} if tapers[i] else {}),
                        "chained_slots": len({j for j, _ in chains[i]}),
                        "chain_min_prob": b.chain_min_prob,
                        "min_visible_mass": min(visible) if visible else None,
                        "chat_template": b.chat_template if b.chat_template in CHAT_TEMPLATES else "custom",
                    },
                )
            )
        return results


# ---------------------------------------------------------------------------------------------------
# Response -> cached value -> records
# ---------------------------------------------------------------------------------------------------
def _strip_echoed_prefix(
    text: str, tokens: list[TokenLogprobs] | None, prefix: str
) -> tuple[str, list[TokenLogprobs] | None]:
    """Fold mode: drop the prefix the model was told to echo (and its tokens); else leave the reply."""
    if text.startswith(prefix):
        cut = len(prefix)
    elif prefix.strip() and text.lstrip().startswith(prefix.strip()):
        cut = len(text) - len(text.lstrip()) + len(prefix.strip())
    else:
        return text, tokens
    return text[cut:], cut_tokens(tokens, cut, None)


def _slot_distributions(
    result: dict[str, Any], prompt: str, offsets: list[int], backend: str, k: int | None = None, taper: float = 0.0
) -> list[dict[str, float]]:
    """The distribution (token text -> logprob) at each character offset of ``prompt``: its top ``k``
    by rank (vLLM adds the prompt's own token to each position even when it is not among them); with a
    ``taper``, the (k+1)-th by rank sets the ramp (:func:`bench.simulators.topk_values.visible_top`)."""
    choice = result["choices"][0]
    tokens, legacy, plp = choice.get("tokens"), choice.get("top_logprobs"), choice.get("prompt_logprobs")
    if tokens is None:
        raise ValueError(f"{backend}: the server echoed no tokens (is it vLLM, with echo + logprobs support?)")
    n_prompt = len(plp) if plp is not None else len(tokens) - 1
    prompt_tokens = tokens[:n_prompt]
    joined = "".join(prompt_tokens)
    if not joined.endswith(prompt):
        raise ValueError(f"{backend}: the server's echoed tokens do not spell the prompt; cannot place slots")
    shift = len(joined) - len(prompt)  # text of special tokens the server prepended (BOS)
    starts: dict[int, int] = {}
    pos = 0
    for index, tok in enumerate(prompt_tokens):
        if tok:
            starts.setdefault(pos - shift, index)
        pos += len(tok)
    out = []
    for offset in offsets:
        i = starts.get(offset)
        if i is None or i == 0:
            raise ValueError(
                f"{backend}: slot at character {offset} does not start a server token (the tokenizer merges it "
                f"with the text before: {prompt[max(0, offset - 12) : offset + 6]!r}); put a separator before slots"
            )
        if plp is not None and plp[i] is not None:
            asked = None if k is None else read_k(k, taper)
            entries = [e for e in plp[i].values() if asked is None or e.get("rank") is None or int(e["rank"]) <= asked]
            pairs = [[entry.get("decoded_token") or "", entry["logprob"]] for entry in entries]
            if taper > 0:
                dist = visible_top(sorted(pairs, key=lambda kv: -float(kv[1])), k, taper)
            else:
                dist = merge_top(pairs)
        elif legacy is not None and legacy[i] is not None:
            ranked = sorted(legacy[i].items(), key=lambda kv: -float(kv[1]))
            dist = visible_top(ranked, k, taper)
        else:
            raise ValueError(f"{backend}: no logprobs at prompt position {i}")
        out.append(dist)
    return out


def _first_generated(choice: dict[str, Any], k: int | None = None, taper: float = 0.0) -> dict[str, float]:
    """The top ``k`` alternatives of the one generated token (servers may add the sampled token), ramped
    by the (k+1)-th with a ``taper``."""
    top = choice.get("top_logprobs")
    if not top or top[0] is None:
        raise ValueError("the chaining request returned no logprobs")
    return visible_top(sorted(top[0].items(), key=lambda kv: -float(kv[1])), k, taper)


__all__ = ["CHAT_TEMPLATES", "FOLD_INSTRUCTION", "VALUE_STRINGS", "OpenAIChatModel", "render_chat"]
