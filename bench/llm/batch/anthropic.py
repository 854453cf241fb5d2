"""Anthropic Message Batches: create with every request inline, poll ``processing_status``, stream the
results.  Limits per job: 100,000 requests and 256 MB of request body."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.llm.batch.state import BatchStatus, Call, ItemResult

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
TRANSIENT_ANTHROPIC_ERRORS = ("api_error", "overloaded_error", "rate_limit_error", "timeout_error")


@dataclass(frozen=True)
class AnthropicBatches:
    """Anthropic Message Batches; ``parse`` turns a result's ``Message`` into the cached value."""

    base_url: str
    parse_message: Callable[[Any], dict[str, Any]]
    provider: str = "anthropic"
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES

    def item_bytes(self, custom_id: str, body: dict[str, Any]) -> int:
        return len(json.dumps({"custom_id": custom_id, "params": body}, ensure_ascii=False).encode()) + 1

    def parse(self, raw: Any) -> dict[str, Any]:
        return self.parse_message(raw)

    async def submit(self, client: Any, call: Call, items: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict]:
        requests = [{"custom_id": cid, "params": body} for cid, body in items]
        created = await call(lambda: client.messages.batches.create(requests=requests))
        return created.id, {}

    async def poll(self, client: Any, call: Call, batch_id: str) -> BatchStatus:
        batch = await call(lambda: client.messages.batches.retrieve(batch_id))
        return BatchStatus(batch.processing_status == "ended", batch.processing_status, batch)

    async def results(self, client: Any, call: Call, status: BatchStatus) -> tuple[dict[str, ItemResult], str | None]:
        batch_id = status.info.id

        async def fetch() -> dict[str, ItemResult]:
            out: dict[str, ItemResult] = {}
            decoder = await client.messages.batches.results(batch_id)
            async for item in decoder:
                result = item.result
                if result.type == "succeeded":
                    out[item.custom_id] = ItemResult(result.message)
                elif result.type == "errored":
                    err = getattr(result.error, "error", None)
                    kind = getattr(err, "type", "error")
                    message = f"{getattr(err, 'message', err)} [{kind}]"
                    out[item.custom_id] = ItemResult(None, None, message, kind in TRANSIENT_ANTHROPIC_ERRORS)
                else:  # canceled, expired
                    out[item.custom_id] = ItemResult(None, None, f"the request was {result.type} before it ran", True)
            return out

        return await call(fetch), None
