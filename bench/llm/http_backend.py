"""What the HTTP backends share beyond the engine: config-field checks and the :class:`HTTPBackend` mixin
(lazy runtime, readiness and server checks, stats, dry-run estimates)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from bench.errors import UserError
from bench.llm.cache import ResponseCache, answer_shape
from bench.llm.client import Engine
from bench.llm.errors import ErrorInfo, read_api_key
from bench.llm.loop import LOOP
from bench.llm.types import BackendStats, CostEstimate, Job, Limits, estimate_tokens

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENGINE_LOCK = threading.Lock()


def check_url_parts(url: str) -> None:
    """A host and a numeric port, checked at config time (else every unit fails with ``InvalidURL``).

    The message quotes only the offending part: the URL may carry a key as userinfo.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("base_url: has no host; write it like http://localhost:8000/v1")
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(
            f"base_url: port {port!r} is not a number in 0..65535; write it like http://localhost:8000/v1"
        ) from None


async def raw_json(raw: Any) -> dict[str, Any]:
    """The JSON body of an SDK ``with_raw_response`` call, as plain dicts (what the provider parsers read).

    Why not the SDK's response models: building them and then ``model_dump`` costs ~4x the JSON parse
    alone, and was a third of the client's CPU per request when every token carries 20 top logprobs
    (``results/benchmarks/engine_api.md``).  The SDK still builds the request, retries and raises its
    typed errors for failed statuses.  ``raw``: OpenAI's legacy raw response (body read, ``.content``) or
    Anthropic's async one (``await .read()``)."""
    import json

    body = json.loads(raw.content if hasattr(raw, "content") else await raw.read())
    if not isinstance(body, dict):
        raise ValueError(f"the response is not a JSON object: {str(body)[:80]!r}")
    return body

def check_common_fields(obj: Any) -> None:
    """``__post_init__`` checks shared by the HTTP backends (``ValueError("field: problem")``)."""
    import re

    from bench.llm.pricing import check_prices

    kinds: dict[str, tuple[type, ...]] = {
        "model": (str,),
        "timeout_s": (int, float),
        "max_retries": (int,),
        "concurrency": (int,),
        "backoff_initial_s": (int, float),
        "backoff_max_s": (int, float),
        "cache": (bool,),
    }
    for name, types in kinds.items():
        value = getattr(obj, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{name}: must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    for name in ("requests_per_minute", "tokens_per_minute"):
        value = getattr(obj, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name}: must be a number or null, got {value!r}")
    if not obj.model:
        raise ValueError("model: give the model id the API serves, e.g. gpt-4o-mini")
    if obj.base_url is not None and not re.match(r"^https?://", obj.base_url):
        raise ValueError(f"base_url: must start with http:// or https://, got {obj.base_url!r}")
    if obj.base_url is not None:
        check_url_parts(obj.base_url)
    env = obj.api_key_env
    if env is not None and not re.match(_ENV_NAME, env):
        # Never echo it: a pasted key is the likely mistake.
        raise ValueError(
            "api_key_env: give the NAME of the environment variable that holds the key (e.g. "
            "OPENAI_API_KEY), not the key itself"
        )
    if not obj.timeout_s > 0:
        raise ValueError(f"timeout_s: must be > 0 seconds, got {obj.timeout_s}")
    if obj.max_retries < 0:
        raise ValueError(f"max_retries: must be >= 0, got {obj.max_retries}")
    if obj.concurrency < 1:
        raise ValueError(f"concurrency: must be >= 1, got {obj.concurrency}")
    for name in ("requests_per_minute", "tokens_per_minute"):
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name}: must be > 0 or null (no limit), got {value}")
    if obj.backoff_initial_s < 0 or obj.backoff_max_s < obj.backoff_initial_s:
        raise ValueError("backoff_max_s: need 0 <= backoff_initial_s <= backoff_max_s")
    check_prices(obj.prices)
    check_batch_fields(obj)


def check_batch_fields(obj: Any) -> None:
    """``batch``, ``batch_poll_s``, ``batch_timeout_s``, ``batch_discount`` (see :mod:`bench.llm.batch`)."""
    if not isinstance(obj.batch, bool):
        raise ValueError(f"batch: must be true or false, got {obj.batch!r}")
    for name in ("batch_poll_s", "batch_timeout_s", "batch_discount"):
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a number, got {value!r}")
    if not obj.batch_poll_s > 0:
        raise ValueError(f"batch_poll_s: must be > 0 seconds, got {obj.batch_poll_s}")
    if obj.batch_timeout_s < 0:
        raise ValueError(
            f"batch_timeout_s: must be >= 0 seconds (0: submit, then stop and collect on a re-run), got "
            f"{obj.batch_timeout_s}"
        )
    if not 0 < obj.batch_discount <= 1:
        raise ValueError(f"batch_discount: must be in (0, 1] (batch price / list price), got {obj.batch_discount}")
    if obj.batch and not obj.cache:
        raise ValueError(
            "batch: needs cache: true (batch answers and the ids of pending batches are kept in the cache folder)"
        )


class HTTPBackend:
    """Mixin for the frozen backend dataclasses: the runtime (engine, SDK client, cache) is created on
    first use, lives outside the dataclass fields (so it is neither config nor compared, hashed,
    pickled or shown by ``repr``), and never holds the API key anywhere but inside the SDK client."""

    name: str
    model: str
    base_url: str | None
    api_key_env: str | None
    cache_dir: str | None
    cache: bool
    prices: dict[str, float] | None
    timeout_s: float
    max_retries: int
    concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    backoff_initial_s: float
    backoff_max_s: float
    batch: bool
    batch_poll_s: float
    batch_timeout_s: float
    batch_discount: float
    provider_id: str  # genai-prices' provider id of the official API (``openai``, ``anthropic``)

    # Subclasses provide these -------------------------------------------------------------------
    def _make_client(self) -> Any:
        raise NotImplementedError

    def _classify(self, err: BaseException) -> ErrorInfo:
        raise NotImplementedError

    def _request_job(self, request: Any) -> Job:
        """The :class:`~bench.llm.types.Job` of one generation request (what batch mode would upload)."""
        raise NotImplementedError

    def _batch_mode(self) -> Any:
        raise NotImplementedError

    def resolved_prices(self, batched: bool = False) -> Any:
        """This backend's :class:`~bench.llm.pricing.Prices` (config, else genai-prices for a hosted API, else
        free for an unknown server, else None: unknown); ``batched``: times ``batch_discount``."""
        from bench.llm import pricing

        prices = pricing.resolve(self.model, self.prices, self.provider_id, self.base_url)
        if batched and prices is not None:
            prices = prices.scaled(float(self.batch_discount))
        return prices

    def batch_jobs(self, requests: Sequence[Any], repeat: int = 1) -> int:
        """Dry run: provider batch jobs needed when ``requests`` (times ``repeat``) go up together, split at
        the provider's request and byte limits; 0 without batch mode (slot requests never go in batches)."""
        from bench.llm.batch.state import plan_jobs
        from bench.protocols import GenerationRequest

        generation = [r for r in requests if isinstance(r, GenerationRequest)]
        if not self.batch or not generation or repeat < 1:
            return 0
        api = self._batch_mode().api
        sizes = [api.item_bytes(job.key, job.request) for job in map(self._request_job, generation)]
        return len(plan_jobs(sizes * repeat, api.max_requests, api.max_bytes))

    # --------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        engine = self.__dict__.get("_engine")
        if engine is not None:
            return engine
        with _ENGINE_LOCK:
            engine = self.__dict__.get("_engine")
            if engine is not None:
                return engine
            from bench.llm.cache import default_cache_dir

            directory = (self.cache_dir or str(default_cache_dir())) if self.cache else None
            prices = self.resolved_prices()
            discount = float(getattr(self, "batch_discount", 1.0))
            engine = Engine(
                label=self.name,
                limits=Limits(
                    concurrency=self.concurrency,
                    requests_per_minute=self.requests_per_minute,
                    tokens_per_minute=self.tokens_per_minute,
                    max_retries=self.max_retries,
                    backoff_initial_s=self.backoff_initial_s,
                    backoff_max_s=self.backoff_max_s,
                    timeout_s=self.timeout_s,
                ),
                cache=ResponseCache(directory, well_formed=answer_shape),
                prices=prices,
                make_client=self._make_client,
                classify=self._classify,
                batch_prices=prices.scaled(discount) if prices is not None else None,
            )
            object.__setattr__(self, "_engine", engine)
            return engine

    @property
    def stats(self) -> BackendStats:
        """Running totals of this backend instance (calls, cache hits, retries, tokens, dollars)."""
        return self.engine.stats()

    def check_ready(self) -> None:
        """Fail fast, before any work: the API key variable is set and the cache folder is writable.

        Raises :class:`~bench.errors.UserError` with a one-line message.  Makes no network call.
        """
        read_api_key(self.api_key_env, self.name)
        try:
            self.engine.cache.check_writable()
        except OSError as err:
            raise UserError(
                f"LLM cache folder {self.engine.cache.directory} is not writable ({err}); "
                "set cache_dir or NEURONBENCH_CACHE"
            ) from None

    def check_server(self) -> list[str] | None:
        """Fail fast, before any model loads: list the server's models once (``GET /v1/models``).

        A server that is down or refuses the key, or a ``model`` it does not serve, is a one-line
        :class:`~bench.errors.UserError` (naming the served models).  What the listing says about the
        model (vLLM: ``max_model_len``) is kept for :attr:`server_context_length`.  Returns the served
        model ids, or None when the server has no model list (404).  Transient failures are retried
        twice, briefly: a down server must not keep the run waiting for minutes.
        """
        if "_served" in self.__dict__:
            return self.__dict__["_served"]
        served, info = LOOP.run(self._list_models())
        # an alias names the newest dated snapshot ("claude-haiku-4-5" -> "claude-haiku-4-5-20251001")
        known = served is None or not served or any(m == self.model or m.startswith(self.model + "-") for m in served)
        if not known:
            raise UserError(
                f"model {self.model!r} is not served by {self._server_url()}; it serves: {', '.join(served or [])} "
                "(set model to one of them)"
            )
        object.__setattr__(self, "_served", served)
        object.__setattr__(self, "_model_info", info)
        return served

    @property
    def server_context_length(self) -> int | None:
        """The served model's context length as the server reported it (vLLM's ``max_model_len``)."""
        info = self.__dict__.get("_model_info") or {}
        value = info.get("max_model_len") or info.get("context_length") or info.get("context_window")
        return int(value) if isinstance(value, int | float) and value > 0 else None

    def _server_url(self) -> str:
        return str(getattr(self, "resolved_base_url", None) or self.base_url or "the provider's API")

    async def _list_models(self) -> tuple[list[str] | None, dict[str, Any]]:
        engine = self.engine
        engine._bind()
        for attempt in range(3):
            try:
                page = await engine.client.models.list()
                rows = [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in page.data]
                served = [str(r.get("id")) for r in rows]
                info = next((r for r in rows if r.get("id") == self.model), {})
                if not info:
                    info = next((r for r in rows if str(r.get("id")).startswith(self.model + "-")), {})
                return served, info
            except Exception as err:  # noqa: BLE001 - every failure becomes one line
                problem = engine.classify(err)
                if problem.status in (404, 405):
                    return None, {}  # no model list on this server: nothing to check
                if problem.retryable and attempt < 2:
                    await engine.sleep(0.5 * 2**attempt)
                    continue
                status = f"HTTP {problem.status}: " if problem.status is not None else ""
                raise UserError(
                    f"the LLM server at {self._server_url()} did not answer the model list "
                    f"({status}{problem.message}); start it, or fix base_url / the API key"
                ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the HTTP client and the cache; a later call reopens them (the counters carry on)."""
        engine = self.__dict__.get("_engine")
        if engine is not None:
            engine.close()

    def _api_key(self) -> str:
        return read_api_key(self.api_key_env, self.name)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_engine"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def _estimate(self, keys: Sequence[str], prompt_chars: Sequence[int], max_tokens: Sequence[int]) -> CostEstimate:
        engine = self.engine
        calls = inp = out = 0
        for key, chars, mt in zip(keys, prompt_chars, max_tokens, strict=True):
            if engine.cache.enabled and key in engine.cache:
                continue
            calls += 1
            inp += estimate_tokens(chars)
            out += mt
        prices = engine.batch_prices if getattr(self, "batch", False) else engine.prices
        dollars = prices.dollars(inp, 0, out) if prices else (math.nan if calls else 0.0)
        return CostEstimate(calls=calls, input_tokens=inp, dollars=dollars)
