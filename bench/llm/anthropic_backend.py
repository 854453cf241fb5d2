"""Anthropic messages API as an LLMClient (generation only: the API returns no logprobs).

The ``anthropic`` SDK is imported on first use; limits, retries, cache and counters come from
:mod:`bench.llm.client` (the engine); requests are built and parsed by :mod:`bench.llm.providers.anthropic`.

* ``temperature`` goes through ``extra_body`` (``messages.create()`` of SDK 2.14 has no such
  parameter); the API accepts 0..1.
* System messages become one ``system`` text block.  With ``prompt_caching`` (default) it carries
  ``cache_control: ephemeral``, and so does the last message before the final user turn: the
  instructions and the few-shot examples form a cacheable prefix shared by every unit (the API
  caches prefixes of at least 1,024 tokens -- 2,048 for Haiku 3/3.5, 4,096 for Haiku 4.5 and Opus 4.5
  (:data:`bench.llm.pricing.CACHE_MIN_TOKENS`) -- and ignores shorter ones).
* Consecutive messages of the same role are joined with a blank line (the API alternates roles).
* ``assistant_prefix`` is sent as a prefilled assistant turn.  The API refuses a prefill that ends
  in whitespace, so trailing whitespace is cut from it and, when the reply starts with that same
  whitespace, from the reply; ``Generation.text`` is the continuation only.
* Stop strings go out as ``stop_sequences`` (whitespace-only ones are not accepted by the API) and
  are all applied again client-side.
* Usage: ``input_tokens`` is the whole prompt (uncached + cache reads + cache writes),
  ``cached_input_tokens`` the cache reads; cache writes are priced separately in the counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.llm.cache import cache_key
from bench.llm.errors import ErrorInfo, describe_sdk_error
from bench.llm.http_backend import HTTPBackend, check_common_fields, raw_json
from bench.llm.providers.anthropic import EPHEMERAL, messages_request, parse_messages
from bench.llm.text import apply_stops
from bench.llm.types import CostEstimate, Job, Outcome
from bench.protocols import Capability, Generation, GenerationRequest, SlotRequest, SlotResult

OFFICIAL_BASE_URL = "https://api.anthropic.com"
__all__ = ["EPHEMERAL", "OFFICIAL_BASE_URL", "AnthropicModel"]


@dataclass(frozen=True)
class AnthropicModel(HTTPBackend):
    """A Claude model behind the messages API.  Cheap to construct: no client, no key read, no network.

    ``api_key_env`` names the environment variable holding the key; the key is read when the client
    is first needed and lives only inside the SDK client.  ``seed``: the API has none; it only enters
    the cache key, so a run with another seed draws fresh samples instead of reusing cached ones.
    ``batch: true`` sends ``generate``'s cache misses as one Message Batch (:mod:`bench.llm.batch`).
    Other fields as in :class:`~bench.llm.openai_backend.OpenAIChatModel`.
    """

    model: str = "claude-haiku-4-5"
    base_url: str | None = None
    api_key_env: str | None = "ANTHROPIC_API_KEY"
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
    prompt_caching: bool = True
    seed: int | None = 0
    prices: dict[str, float] | None = field(default=None, hash=False)
    name: str = ""
    version: int = 1

    provider_id = "anthropic"  # for genai-prices (a class attribute: not a config field)

    # The messages API accepts temperatures in 0..1 only; the config check refuses others up front.
    temperature_range = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_common_fields(self)
        if not self.name:
            object.__setattr__(self, "name", f"anthropic/{self.model}")

    # ------------------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.GENERATE})

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Messages for every request (cache first); raises the first failure after the others finished."""
        plans = [self._plan(r) for r in requests]
        outcomes = self.engine.run([p[0] for p in plans], batch=self._batch_mode())
        return [self._generation(r, p[1], o) for r, p, o in zip(requests, plans, outcomes, strict=True)]

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        plans = [self._plan(r) for r in requests]
        outcomes = await self.engine.arun([p[0] for p in plans], batch=self._batch_mode())
        return [self._generation(r, p[1], o) for r, p, o in zip(requests, plans, outcomes, strict=True)]

    def slot_distributions(self, requests: Sequence[SlotRequest]) -> list[SlotResult]:
        raise NotImplementedError(
            f"{self.name} offers no prompt logprobs (the Anthropic API returns no logprobs); use the "
            "logprob-free estimator, a vLLM server or a local transformers model"
        )

    def estimate(self, requests: Sequence[GenerationRequest]) -> CostEstimate:
        """Dry run: (calls, input tokens ~ chars/4, dollars upper bound); cache hits cost nothing."""
        plans = [self._plan(r) for r in requests]
        chars = [sum(len(m.content) for m in r.messages) + len(r.assistant_prefix) for r in requests]
        return self._estimate([p[0].key for p in plans], chars, [r.max_tokens for r in requests])

    # ------------------------------------------------------------------------------------------------
    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or OFFICIAL_BASE_URL).rstrip("/")

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=self._api_key(), base_url=self.resolved_base_url, max_retries=0, timeout=self.timeout_s
        )

    def _classify(self, err: BaseException) -> ErrorInfo:
        import anthropic

        return describe_sdk_error(err, anthropic)

    def _request_job(self, request: GenerationRequest) -> Job:
        return self._plan(request)[0]

    def _batch_mode(self) -> Any:
        """``None``, or what the engine needs to send messages as a Message Batch."""
        if not self.batch:
            return None
        from bench.llm.batch.anthropic import AnthropicBatches
        from bench.llm.batch.state import BatchMode

        return BatchMode(
            AnthropicBatches(self.resolved_base_url, _batch_message_value), self.batch_poll_s, self.batch_timeout_s
        )

    def _plan(self, r: GenerationRequest) -> tuple[Job, str]:
        """The request's job, and the whitespace cut from the prefill (to cut from the reply too)."""
        payload = messages_request(r, model=self.model, prompt_caching=self.prompt_caching, name=self.name)
        params, extra = payload.params, payload.extra
        key = cache_key(
            {
                "provider": "anthropic-messages",
                "base_url": self.resolved_base_url,
                "params": params,
                "extra_body": extra,
                "sample_index": r.sample_index,
                "seed": self.seed,
            }
        )

        async def send(client: Any) -> dict[str, Any]:
            raw = await client.messages.with_raw_response.create(**params, extra_body=extra)
            return parse_messages(await raw_json(raw))

        job = Job(
            key=key,
            send=send,
            est_tokens=payload.prompt_chars // 4 + r.max_tokens,
            request={**params, **extra},
            input_chars=payload.prompt_chars,
            max_output=r.max_tokens,
        )
        return job, payload.cut

    def _generation(self, r: GenerationRequest, cut: str, outcome: Outcome) -> Generation:
        if outcome.error is not None:
            raise outcome.error
        assert outcome.value is not None
        text = outcome.value["result"]["text"]
        if cut:
            text = text[len(cut) :] if text.startswith(cut) else text.lstrip()
        text, _ = apply_stops(text, None, r.stop)
        return Generation(text=text, usage=self.engine.spent(outcome.value.get("usage") or {}, outcome))


def _batch_message_value(message: Any) -> dict[str, Any]:
    """A batch result's ``Message`` (an SDK object) -> the cached value."""
    return parse_messages(message.model_dump())
