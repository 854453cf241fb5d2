"""A local transformers chat model as an :class:`~bench.protocols.LLMClient`.

It offers all three capabilities: sampled/greedy generation, the top logprobs of generated tokens,
and distributions at positions inside a prompt (the all-at-once simulator's prompt-logprob
estimator).  torch and transformers are imported on first use; the loaded model is cached per
process, so an explainer and a simulator naming the same model share one copy.

Prompt-logprob slots (``slot_distributions``):

* the prompt is ``messages[:-1]`` rendered with the chat template and a generation prompt, followed
  by the last (assistant) message's content as an unterminated prefill;
* each slot is located by **character offsets** (``return_offsets_mapping``) and must start a token:
  if the tokenizer merges the character before a slot with it, a ``ValueError`` says so;
* one forward pass per prompt (batched, right-padded); the token prefix that all prompts of a call
  share (system text, few-shot examples, explanation) is run once and its KV cache reused; the LM
  head is applied only at the positions before slots;
* values that the tokenizer splits (SmolLM2 writes "10" as "1","0") are **chained** exactly:
  P("10") = P("1")·P("0" | …"1").  A value that is a token-prefix of another value ("1" of "10") is
  only complete when the next token does not continue it:
  P("1") = P("1")·(1 − P(next token starts with a letter or digit | …"1")).  The extra
  distributions come from one more batched step over the KV cache of the prompt, with a tree
  attention mask (each extra token sees the prompt up to its slot and its own prefix only).
  How values were handled is recorded in ``SlotResult.meta``.
* ``SlotRequest.top_k = k`` reads only what an API would return: the top ``k`` tokens at each slot
  and at each chaining step (:mod:`bench.simulators.topk_values`, shared with the vLLM backend), so
  ``all_at_once/prompt_logprobs`` gives the same numbers in-process and over HTTP; ``None`` is the
  exact full-vocabulary computation above (``all_at_once/prompt_logprobs_exact``).
  ``SlotRequest.top_k_taper`` > 0 reads the (k+1)-th token too and ramps the cut, as the vLLM backend
  does (:func:`bench.simulators.topk_values.visible_top`).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.llm.client import in_process_meter
from bench.llm.types import BackendStats
from bench.protocols import (
    Capability,
    ChatMessage,
    Generation,
    GenerationRequest,
    SlotRequest,
    SlotResult,
    TokenLogprobs,
)
from bench.records import Usage
from bench.simulators.topk_values import chain_pieces, read_k, value_probabilities, visible_top, wanted_pieces

SMOLLM2_OFFLINE = "smollm2-135m-instruct"
DTYPES = ("float32", "bfloat16", "float16", "auto")

_LOCK = threading.RLock()
# A batch grows the call's shared-prefix cache by its own longer common prefix only when that saves at
# least this many token positions (one extra forward call costs about as much as a few dozen tokens).
MIN_EXTRA_PREFIX_SAVING = 32
_MODELS: dict[tuple[Any, ...], Any] = {}
_TOKENIZERS: dict[tuple[Any, ...], Any] = {}
_CONTINUATION_MASKS: dict[tuple[Any, ...], Any] = {}
_TOKEN_TEXTS: dict[tuple[Any, ...], list[str]] = {}


def clear_cache() -> None:
    """Forget every loaded model and tokenizer of this process (tests, notebooks)."""
    with _LOCK:
        _MODELS.clear()
        _TOKENIZERS.clear()
        _CONTINUATION_MASKS.clear()
        _TOKEN_TEXTS.clear()


@dataclass(frozen=True)
class LocalChatModel:
    """A causal LM with a chat template, run in-process with transformers.

    ``model``: a hub id, a local ``save_pretrained`` directory, a local ``.gguf`` file (dequantised
    once into a dense copy under ``cache_dir``), or ``"smollm2-135m-instruct"`` (the offline SmolLM2
    asset, built once under ``cache_dir``).  ``max_context`` is the prompt + completion
    budget in tokens.  Hub downloads go to ``<cache_dir>/hf``.  ``seed`` makes sampling deterministic
    per (prompt, sample index).
    ``chain_min_prob``: split values are chained at a slot when the probability of their first token
    exceeds it (0.0 chains wherever there is any mass; the error of skipping is at most this value).
    ``chat_template`` overrides the tokenizer's template (e.g. for base models that have none).

    Batching (both ``generate`` and ``slot_distributions``): the requests of one call -- a simulator
    hands over a whole unit, a caller may hand over many units -- are sorted by length and cut into
    padded batches of at most ``batch_size`` rows and, when ``batch_tokens`` > 0, at most
    ``batch_tokens`` padded tokens per forward pass (rows x longest row after the shared prefix; one
    row always fits).  With ``prefix_reuse`` the longest token prefix common to all requests of the
    call (system text, few-shot header) is run once and its key/value cache is copied into every
    batch, instead of being recomputed per row.  Neither setting changes results beyond float noise
    (tests hold them to 1e-5), which is why they are left out of the run hash.
    """

    model: str = SMOLLM2_OFFLINE
    dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 4
    batch_tokens: int = 0
    prefix_reuse: bool = True
    cache_dir: str | None = None
    max_context: int = 8192
    name: str = ""
    seed: int = 0
    chain_min_prob: float = 0.0
    chat_template: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: must be a hub id, a local directory or 'smollm2-135m-instruct'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ValueError(f"device: {self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.batch_tokens < 0:
            raise ValueError("batch_tokens: must be >= 0 (0: no token budget, batch_size alone decides)")
        if self.max_context < 16:
            raise ValueError("max_context: must be >= 16 tokens")
        if not 0.0 <= self.chain_min_prob < 1.0:
            raise ValueError("chain_min_prob: must be in [0, 1)")
        if not self.name:
            object.__setattr__(self, "name", f"local/{self.model}")

    # ------------------------------------------------------------------------------------------------
    # Protocol surface
    # ------------------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.GENERATE,
                Capability.GENERATED_LOGPROBS,
                Capability.PROMPT_LOGPROBS,
                Capability.EXACT_PROMPT_LOGPROBS,
            }
        )

    @property
    def stats(self) -> BackendStats:
        """Running totals of this client (calls, tokens), as for every other client (:mod:`bench.llm.client`)."""
        return in_process_meter(self).stats()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generations; in a run, every unit in flight adds its requests to one call (:mod:`bench.engine`)."""
        from bench.engine import gather

        out = gather(("local/generate", id(self)), list(requests), self._generate_now)
        in_process_meter(self).account([g.usage for g in out])  # the shared wrapper's counters, this unit's meter
        return out

    def _generate_now(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        from bench.model_lock import model_lock

        if not requests:
            return []
        prompts = [self.render(r.messages, r.assistant_prefix) for r in requests]
        ids = [self._encode(p) for p in prompts]
        for r, row in zip(requests, ids, strict=True):
            self._check_length(len(row), r.max_tokens, "generation prompt")
        shared = _common_token_prefix(ids) if self.prefix_reuse and len(ids) > 1 else 0
        out: list[Generation | None] = [None] * len(requests)
        with model_lock(self.torch_model):
            prefix_cache = self._prefix_cache(ids[0][:shared])
            for chunk in self._batches([len(row) - shared for row in ids]):
                done = self._generate_batch(
                    [requests[i] for i in chunk],
                    [prompts[i] for i in chunk],
                    [ids[i] for i in chunk],
                    shared,
                    self._expanded(prefix_cache, len(chunk)),
                )
                for i, g in zip(chunk, done, strict=True):
                    out[i] = g
        return [g for g in out if g is not None]

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]:
        """Value probabilities; in a run, every unit in flight adds its requests to one call
        (:mod:`bench.engine`), each caller's requests tagged so that batches keep them together."""
        from bench.engine import gather

        tag = object()
        out = gather(("local/slots", id(self)), [(tag, r) for r in requests], self._slots_now)
        in_process_meter(self).account([r.usage for r in out])
        return out

    def _slots_now(self, tagged: list[tuple[object, SlotRequest]]) -> list[SlotResult]:
        from bench.model_lock import model_lock

        rank: dict[int, int] = {}
        groups = [rank.setdefault(id(tag), len(rank)) for tag, _ in tagged]  # callers in the engine's order
        with model_lock(self.torch_model):
            return self._slots([r for _, r in tagged], groups)

    # ------------------------------------------------------------------------------------------------
    # Prompt rendering and counting
    # ------------------------------------------------------------------------------------------------
    def render(self, messages: Sequence[ChatMessage], assistant_prefix: str = "") -> str:
        """The prompt text for a reply: chat template with a generation prompt, then ``assistant_prefix``.

        Give a system message: some templates (SmolLM2's) inject a default one otherwise.
        """
        tok = self.tokenizer
        if self.chat_template is None and not getattr(tok, "chat_template", None):
            raise ValueError(f"chat_template: {self.model} has no chat template; set one (a Jinja string)")
        text = tok.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=self.chat_template,
        )
        return text + assistant_prefix

    def render_prefill(self, messages: Sequence[ChatMessage]) -> tuple[str, int]:
        """Prompt text whose last message (an assistant prefill) is left open; and where it starts."""
        if not messages or messages[-1].role != "assistant":
            raise ValueError("a slot request's last message must be the assistant prefill holding the slots")
        head = self.render(messages[:-1])
        return head + messages[-1].content, len(head)

    def count_tokens(self, messages: Sequence[ChatMessage], assistant_prefix: str = "") -> int:
        """Prompt length in tokens, as :meth:`generate` would see it."""
        return len(self._encode(self.render(messages, assistant_prefix)))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------------------------------------
    # Lazy resources
    # ------------------------------------------------------------------------------------------------
    def _source(self) -> str:
        from bench.assets import model_source

        return model_source(self.model, self.cache_dir)

    def _hub_kwargs(self) -> dict[str, Any]:
        """Hub downloads go to ``<cache_dir>/hf`` when a cache_dir is set (else the usual HF cache)."""
        if self.model == SMOLLM2_OFFLINE or self.model.endswith(".gguf") or not self.cache_dir:
            return {}
        return {"cache_dir": os.path.join(self.cache_dir, "hf")}

    @property
    def tokenizer(self) -> Any:
        key = (self.model, self.cache_dir)
        with _LOCK:
            if key not in _TOKENIZERS:
                from transformers import AutoTokenizer

                _TOKENIZERS[key] = AutoTokenizer.from_pretrained(self._source(), **self._hub_kwargs())
            return _TOKENIZERS[key]

    @property
    def torch_model(self) -> Any:
        key = (self.model, self.dtype, self.resolved_device, self.cache_dir)
        with _LOCK:
            if key not in _MODELS:
                import torch
                from transformers import AutoModelForCausalLM

                dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
                model = AutoModelForCausalLM.from_pretrained(self._source(), dtype=dtype, **self._hub_kwargs())
                model.to(self.resolved_device)  # type: ignore[arg-type]  # transformers' stub of .to()
                model.eval()
                _MODELS[key] = model
            return _MODELS[key]

    @property
    def resolved_device(self) -> str:
        from bench.devices import resolve_device

        return resolve_device(self.device)

    def _continuation_mask(self, vocab_size: int) -> Any:
        """Tokens whose text starts with a letter or digit: they would continue a value like "1"."""
        key = (self.model, self.cache_dir, vocab_size)
        with _LOCK:
            if key not in _CONTINUATION_MASKS:
                import torch

                tok = self.tokenizer
                n = min(len(tok), vocab_size)
                texts = tok.batch_decode([[i] for i in range(n)])
                flags = [bool(t) and t[0].isalnum() for t in texts] + [False] * (vocab_size - n)
                _CONTINUATION_MASKS[key] = torch.tensor(flags, dtype=torch.bool)
            return _CONTINUATION_MASKS[key]

    def _token_texts(self, vocab_size: int) -> list[str]:
        """Every token id's text as an API decodes one token (cached per model)."""
        key = (self.model, self.cache_dir, vocab_size)
        with _LOCK:
            if key not in _TOKEN_TEXTS:
                tok = self.tokenizer
                n = min(len(tok), vocab_size)
                _TOKEN_TEXTS[key] = tok.batch_decode([[i] for i in range(n)]) + [""] * (vocab_size - n)
            return _TOKEN_TEXTS[key]

    def _top_k_logprobs(self, probs: Any, k: int, taper: float = 0.0) -> dict[str, float]:
        """The ``k`` most likely tokens of a distribution as an API returns them -- and, with a taper, the
        (k+1)-th that sets the ramp: text -> logprob, equal texts merged (what
        :func:`bench.simulators.topk_values.value_probabilities` reads)."""
        import torch

        texts = self._token_texts(int(probs.shape[-1]))
        values, indices = torch.topk(probs, min(read_k(k, taper), int(probs.shape[-1])))
        pairs = [
            (texts[i], math.log(v) if v > 0 else -1e30) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        return visible_top(pairs, k, taper)

    # ------------------------------------------------------------------------------------------------
    # Batching and the shared prefix
    # ------------------------------------------------------------------------------------------------
    def _batches(self, lengths: Sequence[int], groups: Sequence[int] | None = None) -> list[list[int]]:
        """Indices of rows grouped into padded batches: sorted by caller group, then length (rows of one
        caller share a long prefix; little padding), at most ``batch_size`` rows and ``batch_tokens``
        padded tokens (rows x longest) per batch."""
        group = groups if groups is not None else [0] * len(lengths)
        order = sorted(range(len(lengths)), key=lambda i: (group[i], lengths[i], i))
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if (
                last is not None
                and len(last) < self.batch_size
                and (not self.batch_tokens or (len(last) + 1) * max(lengths[i], 1) <= self.batch_tokens)
            ):
                last.append(i)
            else:
                batches.append([i])
        return batches

    def _prefix_cache(self, prefix: Sequence[int]) -> Any:
        """The KV cache of ``prefix`` (batch of one), or None for an empty prefix."""
        if not prefix:
            return None
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(prefix)], device=self.resolved_device)
            return self.torch_model(input_ids=ids, use_cache=True, logits_to_keep=1).cache

    def _extended(self, prefix_cache: Any, ids: Sequence[int], start: int, end: int) -> Any:
        """The KV cache of ``ids[:end]`` grown from ``prefix_cache`` (which holds ``ids[:start]``): a
        batch whose rows share more than the call's common prefix (one unit's explanation after the
        few-shot header) runs only the extra tokens once."""
        if prefix_cache is None:
            return self._prefix_cache(ids[:end])
        import torch

        cache = self._expanded(prefix_cache, 1)
        with torch.inference_mode():
            tokens = torch.tensor([list(ids[start:end])], device=self.resolved_device)
            return self.torch_model(input_ids=tokens, cache=cache, use_cache=True, logits_to_keep=1).cache

    @staticmethod
    def _expanded(prefix_cache: Any, rows: int) -> Any:
        """A fresh copy of the prefix cache for one batch of ``rows`` (the forward pass extends it in place)."""
        if prefix_cache is None:
            return None
        import copy

        cache = copy.deepcopy(prefix_cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def _check_length(self, n_tokens: int, extra: int, what: str) -> None:
        if n_tokens + extra > self.max_context:
            raise ValueError(
                f"{what} of {n_tokens} tokens (+{extra}) exceeds max_context={self.max_context} of {self.name}"
            )

    # ------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------
    def _row_seed(self, prompt: str, sample_index: int) -> int:
        digest = hashlib.sha256(f"{self.seed}\x00{sample_index}\x00{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        gen_eos = getattr(getattr(self.torch_model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        return ids

    def _generate_batch(
        self,
        requests: list[GenerationRequest],
        prompts: list[str],
        ids: list[list[int]],
        shared: int,
        prefix_cache: Any,
    ) -> list[Generation]:
        """Decode one batch: the rows' suffixes after ``shared`` cached prefix tokens, left-padded.

        With a prefix the pads sit between the prefix and a row's suffix: the attention mask covers
        prefix + suffix (pads 0) and position ids continue from the prefix, so every row sees exactly
        the positions it would see alone.
        """
        import torch

        tok, model = self.tokenizer, self.torch_model
        device = self.resolved_device
        eos = self._eos_ids()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)
        input_ids, mask = _left_pad([row[shared:] for row in ids], pad, device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0) + shared
        if shared:
            mask = torch.cat([torch.ones((len(ids), shared), dtype=mask.dtype, device=device), mask], dim=1)
        padded = any(len(row) - shared != input_ids.shape[1] for row in ids)  # no padding: no mask (faster sdpa)
        generators = []
        for r, p in zip(requests, prompts, strict=True):
            g = torch.Generator(device=device)
            g.manual_seed(self._row_seed(p, r.sample_index))
            generators.append(g)

        n = len(requests)
        generated: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(n)]
        texts = [""] * n
        done = [r.max_tokens <= 0 for r in requests]
        with torch.inference_mode():
            masks = {"attention_mask": mask, "position_ids": position_ids} if padded else {}
            if prefix_cache is None and n > 1 and all(row == ids[0] for row in ids):  # k samples of one prompt
                out = model(input_ids=input_ids[:1], use_cache=True, logits_to_keep=1)
                past = out.cache
                past.batch_repeat_interleave(n)
                logits = out.logits[:, -1, :].float().expand(n, -1)
            else:
                out = model(input_ids=input_ids, cache=prefix_cache, use_cache=True, logits_to_keep=1, **masks)
                past = out.cache
                logits = out.logits[:, -1, :].float()
            for _step in range(max(r.max_tokens for r in requests)):
                next_tokens = []
                for i, r in enumerate(requests):
                    if done[i]:
                        next_tokens.append(pad)
                        continue
                    row = logits[i]
                    if r.temperature <= 0:
                        t = int(torch.argmax(row))
                    else:
                        probs = torch.softmax(row / r.temperature, dim=-1)
                        t = int(torch.multinomial(probs, 1, generator=generators[i]))
                    if r.top_logprobs > 0:
                        logprobs[i].append(self._token_logprobs(row, t, r.top_logprobs))
                    generated[i].append(t)
                    next_tokens.append(t)
                    if t in eos:
                        done[i] = True
                        texts[i] = tok.decode(generated[i][:-1], skip_special_tokens=True)
                        continue
                    texts[i] = tok.decode(generated[i], skip_special_tokens=True)
                    if _first_stop(texts[i], r.stop) is not None or len(generated[i]) >= r.max_tokens:
                        done[i] = True
                if all(done):
                    break
                step_ids = torch.tensor(next_tokens, device=device)[:, None]
                if padded:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    position_ids = position_ids[:, -1:] + 1
                    masks = {"attention_mask": mask, "position_ids": position_ids}
                out = model(input_ids=step_ids, cache=past, use_cache=True, **masks)
                past = out.cache
                logits = out.logits[:, -1, :].float()

        results = []
        for i, r in enumerate(requests):
            text = texts[i]
            cut = _first_stop(text, r.stop)
            if cut is not None:
                text = text[:cut]
            results.append(
                Generation(
                    text=text,
                    logprobs=logprobs[i] if r.top_logprobs > 0 else None,
                    usage=Usage(
                        calls=1, input_tokens=len(ids[i]), output_tokens=len(generated[i]), cached_input_tokens=shared
                    ),
                )
            )
        return results

    def _token_logprobs(self, logits: Any, chosen: int, k: int) -> TokenLogprobs:
        """Logprobs of the model's own distribution (temperature 1), summed over equal token texts."""
        import torch

        tok = self.tokenizer
        lp = torch.log_softmax(logits, dim=-1)
        values, indices = torch.topk(lp, k)
        top: dict[str, float] = {}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True):
            text = tok.decode([i])
            if text in top:  # two ids with the same text: add their probabilities
                hi, lo = max(top[text], v), min(top[text], v)
                v = hi + math.log1p(math.exp(lo - hi))
            top[text] = float(v)
        return TokenLogprobs(token=tok.decode([chosen]), logprob=float(lp[chosen]), top=top)

    # ------------------------------------------------------------------------------------------------
    # Prompt logprobs at slots
    # ------------------------------------------------------------------------------------------------
    def _value_ids(self, before: str, values: Sequence[str], cache: dict[Any, list[list[int]]]) -> list[list[int]]:
        """Token ids of each value as written right after the character ``before`` (never by lookup:
        ``convert_tokens_to_ids("10")`` silently gives 0 for some tokenizers)."""
        key = (before, tuple(values))
        if key in cache:
            return cache[key]
        base = self._encode(before)
        out = []
        for v in values:
            full = self._encode(before + v)
            if full[: len(base)] != base or len(full) == len(base):
                raise ValueError(
                    f"the tokenizer of {self.name} merges {before!r} with the value {v!r}; "
                    "choose a prompt format whose slots start a token (e.g. values after a tab)"
                )
            out.append(full[len(base) :])
        cache[key] = out
        return out

    def _prepare_slots(self, req: SlotRequest, value_cache: dict[Any, list[list[int]]]) -> dict[str, Any]:
        text, content_start = self.render_prefill(req.messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        self._check_length(len(ids), 0, "slot prompt")
        starts: dict[int, int] = {}
        for j, (s, e) in enumerate(offsets):
            if e > s:
                starts.setdefault(s, j)
        starts.setdefault(len(text), len(ids))  # a slot at the very end: the next-token distribution
        positions, value_ids, piece_ids = [], [], []
        pieces = chain_pieces(req.values) if req.top_k is not None else []
        for slot in req.slots:
            at = content_start + slot
            if not 0 <= slot <= len(req.messages[-1].content):
                raise ValueError(f"slot offset {slot} is outside the prefill (length {len(req.messages[-1].content)})")
            pos = starts.get(at)
            if pos is None or pos == 0 or offsets[pos - 1][1] != at:
                j_over = next((k for k, (s, e) in enumerate(offsets) if s < at < e), None)
                piece = text[offsets[j_over][0] : offsets[j_over][1]] if j_over is not None else "?"
                raise ValueError(
                    f"slot at character {slot} does not start a token: the tokenizer of {self.name} merges it "
                    f"with the text before it (token {piece!r}); choose a prompt format that separates them "
                    "(e.g. the value after a tab)"
                )
            positions.append(pos)
            value_ids.append(self._value_ids(text[at - 1], req.values, value_cache))
            if pieces:
                piece_ids.append(dict(zip(pieces, self._value_ids(text[at - 1], pieces, value_cache), strict=True)))
        return {
            "ids": ids,
            "positions": positions,
            "value_ids": value_ids,
            "top_k": req.top_k,
            "top_k_taper": req.top_k_taper,
            "values": req.values,
            "piece_ids": piece_ids,
        }

    def _slot_result(self, req: SlotRequest, prep: dict[str, Any], probs: list[list[float]], shared: int) -> SlotResult:
        value_ids = prep["value_ids"][0]
        multi = {
            v: self.tokenizer.convert_ids_to_tokens(ids)
            for v, ids in zip(req.values, value_ids, strict=True)
            if len(ids) > 1
        }
        meta = {
            "slots": len(prep["positions"]),
            "multi_token_values": "chained" if multi else "single_token",
            "value_tokens": multi,
            "terminated_prefix_values": sorted(_prefix_values(req.values, value_ids)),
            "chain_min_prob": self.chain_min_prob,
            "top_k": prep["top_k"],  # None: the whole vocabulary (exact)
            **({"top_k_taper": prep["top_k_taper"]} if prep["top_k_taper"] else {}),
            "prompt_tokens": len(prep["ids"]),
            "shared_prefix_tokens": shared,
        }
        return SlotResult(
            probabilities=[{v: row[k] for k, v in enumerate(req.values)} for row in probs],
            usage=Usage(calls=1, input_tokens=len(prep["ids"]), cached_input_tokens=shared),
            meta=meta,
        )

    def _slots(self, requests: list[SlotRequest], groups: Sequence[int] | None = None) -> list[SlotResult]:
        """All requests of one call (many units' in a run): the token prefix common to all of them (the
        few-shot header) is run once and its KV cache reused; a batch whose rows share more (one unit's
        explanation) grows that cache by its extra tokens once.  ``groups``: the caller of each request."""
        value_cache: dict[Any, list[list[int]]] = {}
        preps = [self._prepare_slots(r, value_cache) for r in requests]
        results: list[SlotResult | None] = [None] * len(requests)
        live = []
        for i, p in enumerate(preps):
            if p["positions"]:
                live.append(i)
            else:
                results[i] = SlotResult(probabilities=[], usage=Usage(calls=0), meta={"slots": 0})
        shared = _common_prefix([preps[i] for i in live]) if self.prefix_reuse and len(live) > 1 else 0
        prefix_cache = self._prefix_cache(preps[live[0]]["ids"][:shared]) if live else None
        row_groups = [groups[i] for i in live] if groups is not None else None
        for batch in self._batches([len(preps[i]["ids"]) - shared for i in live], row_groups):
            chunk = [live[k] for k in batch]
            rows = [preps[i] for i in chunk]
            local = _common_prefix(rows) if self.prefix_reuse and len(rows) > 1 else shared
            if (local - shared) * (len(rows) - 1) >= MIN_EXTRA_PREFIX_SAVING:
                cache = self._expanded(self._extended(prefix_cache, rows[0]["ids"], shared, local), len(rows))
            else:
                local, cache = shared, self._expanded(prefix_cache, len(rows))
            probs = self._slots_rows(rows, local, cache)
            for i, got in zip(chunk, probs, strict=True):
                results[i] = self._slot_result(requests[i], preps[i], got, local)
        return [r for r in results if r is not None]

    def _slots_rows(self, rows: list[dict[str, Any]], shared: int, cache: Any) -> list[list[list[float]]]:
        """One forward pass over the rows' suffixes (right-padded, after ``shared`` cached tokens)."""
        import torch

        model, device = self.torch_model, self.resolved_device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        suffixes = [p["ids"][shared:] for p in rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for b, s in enumerate(suffixes):  # right padding: causal attention never looks at the pads
            input_ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        n_keep = max(len(p["positions"]) for p in rows)
        keep = torch.zeros((len(rows), n_keep), dtype=torch.long)
        for b, p in enumerate(rows):
            pos = [j - 1 - shared for j in p["positions"]]
            keep[b] = torch.tensor(pos + [pos[-1]] * (n_keep - len(pos)))
        with torch.inference_mode():
            out = model(input_ids=input_ids.to(device), cache=cache, use_cache=True, logits_to_keep=keep.to(device))
            first = torch.softmax(out.logits.float(), dim=-1).cpu()  # (B, n_keep, V)
            return self._chain(rows, first, out.cache, shared + width)

    def _chain(self, rows: list[dict[str, Any]], first: Any, cache: Any, length: int) -> list[list[list[float]]]:
        """P(value) per slot and value; split values are chained with one tree-attention step on the cache.

        Each extra query token (the last token of an unfinished value prefix at a slot) attends to the
        prompt before its slot, to its own ancestors in the value trie, and to itself.
        """
        import torch

        model, device = self.torch_model, self.resolved_device
        vocab = first.shape[-1]
        queries: list[list[tuple[int, tuple[int, ...]]]] = []  # per row: (slot index, trie node path)
        visible: list[list[dict[str, float]]] = []  # per top-k row and slot: the top-k distribution (text -> logprob)
        wanted: list[list[list[str]]] = []  # per top-k row and slot: the visible pieces that are chained
        for b, p in enumerate(rows):
            qs = []
            if p["top_k"] is None:
                for s, vids in enumerate(p["value_ids"]):
                    for path in sorted(_internal_nodes(vids)):
                        if float(first[b, s, path[0]]) > self.chain_min_prob:
                            qs.append((s, path))
                visible.append([])
                wanted.append([])
            else:  # only what an API would show: the top k, then the pieces visible among them
                dists = [
                    self._top_k_logprobs(first[b, s], p["top_k"], p["top_k_taper"]) for s in range(len(p["positions"]))
                ]
                pieces = [wanted_pieces(p["values"], dist, self.chain_min_prob) for dist in dists]
                nodes: set[tuple[int, tuple[int, ...]]] = set()
                for s, slot_pieces in enumerate(pieces):
                    for piece in slot_pieces:
                        path = tuple(p["piece_ids"][s][piece])
                        nodes.update((s, path[:d]) for d in range(1, len(path) + 1))
                qs = sorted(nodes)
                visible.append(dists)
                wanted.append(pieces)
            queries.append(qs)
        node_probs: list[dict[tuple[int, tuple[int, ...]], Any]] = [{} for _ in rows]
        n_q = max((len(q) for q in queries), default=0)
        if n_q:
            window = _sliding_window(model)
            if window is not None and length + n_q > window:
                raise ValueError(
                    f"{self.name} uses sliding-window attention ({window} tokens) and the prompt is longer: "
                    "chaining values the tokenizer splits is not supported there; use a shorter prompt"
                )
            attn = torch.full((len(rows), 1, n_q, length + n_q), torch.finfo(model.dtype).min, dtype=model.dtype)
            q_ids = torch.zeros((len(rows), n_q), dtype=torch.long)
            q_pos = torch.zeros((len(rows), n_q), dtype=torch.long)
            for b, qs in enumerate(queries):
                index = {q: k for k, q in enumerate(qs)}
                for k, (s, path) in enumerate(qs):
                    j = rows[b]["positions"][s]  # the slot's token index = its position in the cache
                    attn[b, 0, k, :j] = 0.0
                    for d in range(1, len(path) + 1):
                        attn[b, 0, k, length + index[(s, path[:d])]] = 0.0
                    q_ids[b, k] = path[-1]
                    q_pos[b, k] = j + len(path) - 1
                for k in range(len(qs), n_q):  # padding queries attend to themselves only
                    attn[b, 0, k, length + k] = 0.0
            with torch.inference_mode():
                out = model(
                    input_ids=q_ids.to(device),
                    attention_mask=attn.to(device),
                    position_ids=q_pos.to(device),
                    cache=cache,
                    use_cache=True,
                )
                nxt = torch.softmax(out.logits.float(), dim=-1).cpu()
            for b, qs in enumerate(queries):
                for k, q in enumerate(qs):
                    node_probs[b][q] = nxt[b, k]
        cont = self._continuation_mask(vocab)

        out_probs: list[list[list[float]]] = []
        for b, p in enumerate(rows):
            if p["top_k"] is not None:  # the one top-k definition, shared with the HTTP backend
                per_slot_k = []
                for s, dist in enumerate(visible[b]):
                    after = {
                        piece: self._top_k_logprobs(
                            node_probs[b][(s, tuple(p["piece_ids"][s][piece]))], p["top_k"], p["top_k_taper"]
                        )
                        for piece in wanted[b][s]
                    }
                    probs = value_probabilities(p["values"], dist, after)
                    per_slot_k.append([probs[v] if math.isfinite(probs[v]) else 0.0 for v in p["values"]])
                out_probs.append(per_slot_k)
                continue
            per_slot = []
            for s, vids in enumerate(p["value_ids"]):
                internal = _internal_nodes(vids)
                row = []
                for ids in vids:
                    prob = float(first[b, s, ids[0]])
                    for d in range(1, len(ids)):
                        node = node_probs[b].get((s, tuple(ids[:d])))
                        prob = 0.0 if node is None else prob * float(node[ids[d]])
                    if tuple(ids) in internal and prob > 0.0:
                        node = node_probs[b].get((s, tuple(ids)))
                        if node is not None:  # complete only if the next token does not continue it
                            prob *= max(0.0, 1.0 - float(node[cont].sum()))
                    row.append(prob if math.isfinite(prob) else 0.0)
                per_slot.append(row)
            out_probs.append(per_slot)
        return out_probs


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def _left_pad(rows: list[list[int]], pad: int, device: str) -> tuple[Any, Any]:
    import torch

    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, length - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[b, length - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _common_token_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all rows share, leaving every row at least one token of its own (the
    one whose logits start the reply)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _common_prefix(rows: list[dict[str, Any]]) -> int:
    """Length of the token prefix all rows share, ending before every row's first slot position."""
    first = rows[0]["ids"]
    n = min(min(p["positions"]) - 1 for p in rows)
    for p in rows[1:]:
        ids = p["ids"]
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _sliding_window(model: Any) -> int | None:
    """The attention window when some layer of the model uses sliding-window attention, else None."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if any(t != "full_attention" for t in layer_types) else None
    return int(window) if getattr(config, "use_sliding_window", True) else None


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _internal_nodes(value_ids: Sequence[Sequence[int]]) -> set[tuple[int, ...]]:
    """Token prefixes after which some value still continues (the nodes that need a next distribution)."""
    nodes: set[tuple[int, ...]] = set()
    for ids in value_ids:
        for d in range(1, len(ids)):
            nodes.add(tuple(ids[:d]))
    return nodes


def _prefix_values(values: Sequence[str], value_ids: Sequence[Sequence[int]]) -> set[str]:
    internal = _internal_nodes(value_ids)
    return {v for v, ids in zip(values, value_ids, strict=True) if tuple(ids) in internal}
