"""The OpenAI Batch API for chat completions: upload a JSONL file, create the batch, poll it, read the
output and error files.  Limits per job: 50,000 requests and 200 MB of JSONL."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.llm.batch.state import BatchStatus, Call, ItemResult, transient_status

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024


def batch_line(custom_id: str, endpoint: str, body: dict[str, Any]) -> str:
    """One request of the batch input file (the bytes counted against ``MAX_BYTES``)."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}, ensure_ascii=False)


@dataclass(frozen=True)
class OpenAIBatches:
    """The OpenAI Batch API for chat completions; ``parse`` turns a response body into the cached value."""

    base_url: str
    parse_body: Callable[[dict[str, Any]], dict[str, Any]]
    endpoint: str = "/v1/chat/completions"
    provider: str = "openai"
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES

    def item_bytes(self, custom_id: str, body: dict[str, Any]) -> int:
        return len(batch_line(custom_id, self.endpoint, body).encode()) + 1

    def parse(self, raw: Any) -> dict[str, Any]:
        return self.parse_body(raw)

    async def submit(self, client: Any, call: Call, items: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict]:
        lines = [batch_line(cid, self.endpoint, body) for cid, body in items]
        data = ("\n".join(lines) + "\n").encode()
        uploaded = await call(
            lambda: client.files.create(file=("neuronbench-batch.jsonl", data, "application/jsonl"), purpose="batch")
        )
        created = await call(
            lambda: client.batches.create(
                input_file_id=uploaded.id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata={"source": "neuronbench"},
            )
        )
        return created.id, {"input_file_id": uploaded.id}

    async def poll(self, client: Any, call: Call, batch_id: str) -> BatchStatus:
        batch = await call(lambda: client.batches.retrieve(batch_id))
        return BatchStatus(batch.status in ("completed", "expired", "cancelled", "failed"), batch.status, batch)

    async def results(self, client: Any, call: Call, status: BatchStatus) -> tuple[dict[str, ItemResult], str | None]:
        batch = status.info
        if batch.status == "failed":
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            detail = "; ".join(
                f"{e.code or 'error'}: {e.message}" + (f" (line {e.line})" if e.line is not None else "")
                for e in errors
            )
            return {}, f"the batch failed: {detail or 'no reason given'}"
        out: dict[str, ItemResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await call(functools.partial(client.files.content, file_id))
            for line in content.text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    out[entry["custom_id"]] = _openai_line(entry)
        default = None if batch.status == "completed" else f"the batch ended as {batch.status}"
        return out, default


def _openai_line(entry: dict[str, Any]) -> ItemResult:
    response = entry.get("response") or {}
    status = response.get("status_code")
    if entry.get("error"):
        err = entry["error"]
        gone = err.get("code") in ("batch_expired", "batch_cancelled")  # never ran: worth another try
        return ItemResult(
            None, status, f"{err.get('message') or err} [{err.get('code')}]", gone or transient_status(status)
        )
    if status is not None and 200 <= int(status) < 300:
        return ItemResult(response.get("body"))
    body = response.get("body") or {}
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict):
        kind = inner.get("type") or inner.get("code")
        message = f"{inner.get('message') or inner}" + (f" [{kind}]" if kind else "")
    else:
        message = str(inner)
    code = int(status) if status is not None else None
    return ItemResult(None, code, message, transient_status(code))
