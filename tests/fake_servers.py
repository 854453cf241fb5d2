"""Loopback HTTP servers that speak the real wire formats of the LLM APIs neuronbench calls.

The official SDKs use ``httpx2``, which respx / pytest-httpx do not intercept, so the adapter tests
drive the SDK clients against these servers on 127.0.0.1 instead:

* ``/v1/chat/completions`` -- OpenAI chat completions, with ``logprobs`` / ``top_logprobs``, ``usage``
  incl. ``prompt_tokens_details.cached_tokens`` (a simulated prefix cache), stop strings, and vLLM's
  ``continue_final_message`` prefill extension;
* ``/v1/completions`` -- vLLM-style completions: ``echo`` + ``logprobs`` (legacy ``text_offset`` /
  ``tokens`` / ``top_logprobs``), ``prompt_logprobs`` (token id -> ``{logprob, rank, decoded_token}``),
  a list of prompts in one request;
* ``/v1/messages`` -- Anthropic messages, with prefilled assistant turns, ``system`` blocks with
  ``cache_control`` (a simulated prompt cache), ``cache_read_input_tokens`` / ``cache_creation_input_tokens``;
* batch APIs -- OpenAI ``POST /v1/files`` (multipart upload), ``POST /v1/batches``, ``GET /v1/batches/{id}``,
  ``GET /v1/files/{id}/content`` (output and error JSONL files); Anthropic ``POST /v1/messages/batches``,
  ``GET /v1/messages/batches/{id}``, ``GET`` of its ``results_url`` (JSONL).  A batch is processed when
  it has been retrieved ``batch_polls`` times, each request by the same code as a direct call;
  ``batch_fault_fn(custom_id, body)`` fails or expires single requests.

Knobs for fault injection: ``latency_s`` (every request), ``faults`` (a FIFO of per-request faults:
``{"status": 429, "retry_after": "3"}``, ``{"status": 500}``, ``{"delay": 2.0}``, ``{"truncate": True}``,
``{"malformed": True}``, ``{"disconnect": True}``; ``None`` = no fault) and ``fault_fn(n, path, body)``
(return a fault spec or ``None``; ``n`` counts requests from 0).  Every request is logged in ``log``.

The "model" is deterministic: ``responder(body) -> str`` writes the reply (default: the text after
``REPLY:`` in the last user message, else ``"Hello from <model>"``); ``next_token(prefix) -> {token: p}``
gives the completions endpoint's next-token distributions (default: a digit distribution after a tab).
Tokens come from :func:`tokenize` (digits are single tokens, so "10" is "1","0" as in SmolLM2/Qwen).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TOKEN_RE = re.compile(r"\d| ?[A-Za-z]+|\s|[^\sA-Za-z\d]")


def tokenize(text: str) -> list[str]:
    """A toy tokenizer whose tokens concatenate back to ``text``; digits are single tokens."""
    return _TOKEN_RE.findall(text)


def default_next_token(prefix: str) -> dict[str, float]:
    """Next-token distribution of the toy completions model (a sub-distribution: top tokens only)."""
    if prefix.endswith("\t"):
        return {"0": 0.5, "1": 0.25, "2": 0.1, "unknown": 0.1, "5": 0.05}
    if prefix.endswith("\t1"):
        return {"\n": 0.5, "0": 0.4, "5": 0.1}
    return {"\n": 0.3, " the": 0.2, "\t": 0.1}


def default_responder(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    content = _content_text(last_user.get("content")) if last_user else ""
    if "REPLY:" in content:
        return content.split("REPLY:", 1)[1].strip()
    seed = body.get("seed")
    return f"Hello from {body.get('model')}" + (f" (seed {seed})" if seed is not None else "")


def benchmark_responder(body: dict[str, Any]) -> str:
    """A responder that plays neuronbench's explainer and simulator (``server.responder = benchmark_responder``).

    Simulator prompts (all-at-once write-back, one-at-a-time questions) are answered by the fake
    simulator rule of :func:`bench.llm.fake.simulator_answer` (10 for tokens named by the explanation,
    else 0); explainer prompts (``token<TAB>value`` lines) with the tokens of their highest values;
    anything else as :func:`default_responder`.
    """
    from bench.llm.fake import simulator_answer
    from bench.simulators.prompt_format import unescape_token

    messages = body.get("messages") or []
    answer = simulator_answer(messages)
    if answer is not None:
        return "".join(piece for piece, _ in answer)
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    lines = _content_text(last_user.get("content")).split("\n") if last_user else []
    scored = [line.rsplit("\t", 1) for line in lines if re.search(r"\t\d+$", line)]
    if not scored:
        return default_responder(body)
    top = max(int(v) for _, v in scored)
    words = list(dict.fromkeys(unescape_token(t).strip() for t, v in scored if int(v) == top and t.strip()))
    return f"the words {', '.join(words[:3]) or 'of the text'}"


def simulating_next_token(prefix: str) -> dict[str, float]:
    """``next_token`` for the completions endpoint that plays the prompt-logprob simulator: at a slot
    (after a tab) mostly "1" (continued by "0": 10) when the line's token is a word of the last
    explanation in the prompt, else mostly "0"."""
    if prefix.endswith("\t1"):
        return {"0": 0.9, "\n": 0.1}
    if not prefix.endswith("\t"):
        return default_next_token(prefix)
    from bench.simulators.prompt_format import unescape_token

    token = unescape_token(prefix[prefix.rfind("\n") + 1 : -1]).strip().lower()
    found = re.findall(r"Explanation of neuron \d+: (.*)", prefix)
    words = {w.lower() for w in re.findall(r"\w+", found[-1])} if found else set()
    if token and token in words:
        return {"1": 0.8, "0": 0.1, "unknown": 0.1}
    return {"0": 0.8, "1": 0.05, "unknown": 0.15}


def chatml_render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The server-side chat template of the fake vLLM server (ChatML, as Qwen and SmolLM2)."""
    text = "".join(f"<|im_start|>{m['role']}\n{_content_text(m.get('content'))}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return ""


def _alternatives(token: str) -> list[str]:
    if token.isdigit():
        return [str(d) for d in range(10) if str(d) != token] + ["10"]
    return [
        " the",
        " a",
        "\n",
        ",",
        ".",
        " and",
        " of",
        " to",
        " in",
        " is",
        " it",
        " that",
        " for",
        " on",
        " with",
        " as",
        " was",
        " he",
        " be",
        " at",
        " by",
    ]


def _top_logprobs(token: str, k: int) -> list[tuple[str, float]]:
    """The chosen token with p=0.7 and k-1 alternatives sharing the rest (descending)."""
    out = [(token, math.log(0.7))]
    alts = [a for a in _alternatives(token) if a != token][: max(k - 1, 0)]
    for i, alt in enumerate(alts):
        out.append((alt, math.log(0.3 / (2 ** (i + 1)))))
    return out[:k] if k > 0 else out[:1]


class FakeLLMServer:
    """A threaded loopback server; ``with FakeLLMServer() as srv: srv.base_url``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: tuple[str, ...] | None = None,
        latency_s: float = 0.0,
        max_top_logprobs: int = 20,
        max_model_len: int | None = None,
        cache_min_tokens: int | str = "provider",
    ) -> None:
        self.api_key = api_key
        self.models = models
        self.max_model_len = max_model_len  # reported by GET /v1/models (vLLM does), when models are listed
        # Prompt caching starts at a minimum prompt length, as at the providers ("provider": their minimum
        # for the requested model, bench.llm.pricing.cache_minimum; none for unknown models); 0: always.
        self.cache_min_tokens = cache_min_tokens
        # /tokenize (vLLM): how the server renders chat messages; a test may swap it to simulate a mismatch
        self.chat_render: Callable[[list[dict[str, Any]], bool], str] = chatml_render
        self.latency_s = latency_s
        self.max_top_logprobs = max_top_logprobs
        self.faults: deque[dict[str, Any] | None] = deque()
        self.fault_fn: Callable[[int, str, dict[str, Any]], dict[str, Any] | None] | None = None
        self.responder: Callable[[dict[str, Any]], str] = default_responder
        self.next_token: Callable[[str], dict[str, float]] = default_next_token
        self.log: list[dict[str, Any]] = []
        # Batch APIs: uploaded files, batches (processed when retrieved ``batch_polls`` times), the requests
        # they ran, and ``batch_fault_fn(custom_id, body)`` -> ``{"status": 400, "message": ...}`` (that
        # request fails) or ``{"expired": True}`` (it never ran) or ``None``.
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_log: list[dict[str, Any]] = []
        self.batch_polls = 2
        self.batch_fault_fn: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._n = 0
        self._seen_prefixes: set[str] = set()
        self._vocab: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in /v1)."""
        return f"{self.root}/v1"

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for entry in self.log
            if (path is None or entry["path"] == path) and (method is None or entry["method"] == method)
        )

    def start(self) -> FakeLLMServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        server = _Server(("127.0.0.1", 0), handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------
    def _next_fault(self, n: int, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        if fault is None and self.fault_fn is not None:
            fault = self.fault_fn(n, path, body)
        return fault

    def token_id(self, token: str) -> int:
        with self._lock:
            return self._vocab.setdefault(token, len(self._vocab) + 100)

    def cache_minimum(self, model: Any) -> int:
        """Fewest prompt tokens (OpenAI: the whole prompt; Anthropic: the marked prefix) that are cached."""
        if self.cache_min_tokens != "provider":
            return int(self.cache_min_tokens)
        from bench.llm.pricing import cache_minimum

        return cache_minimum(str(model or "")) or 0

    def _prefix_cached(self, prefix: str) -> bool:
        with self._lock:
            seen = prefix in self._seen_prefixes
            self._seen_prefixes.add(prefix)
            return seen


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the stdlib default of 5 stalls concurrent clients
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out or hang up mid-answer are part of the tests: no tracebacks for them."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer
    _capture: list[tuple[int, Any]] | None = None
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the stdlib logger
        return

    # ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """``GET /_stats``: how many requests the server has seen (for out-of-process benchmarks);
        the batch endpoints (retrieve a batch, a file's content, a message batch's results)."""
        if self.path.split("?")[0] == "/_stats":
            self._send(200, {"requests": self.fake._n, "max_active": self.fake.max_active})
            return
        self._handle("GET", b"")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self._handle("POST", raw)

    def _handle(self, method: str, raw: bytes) -> None:
        fake = self.fake
        multipart = self.headers.get("Content-Type", "").startswith("multipart/")
        try:
            body = {} if multipart else json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        path = self.path.split("?")[0]
        with fake._lock:
            n = fake._n
            fake._n += 1
            fake.log.append(
                {
                    "method": method,
                    "path": path,
                    "body": body,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "n": n,
                }
            )
            fake.active += 1
            fake.max_active = max(fake.max_active, fake.active)
        try:
            if fake.latency_s:
                time.sleep(fake.latency_s)
            fault = fake._next_fault(n, path, body)
            if fault and self._apply_fault(fault, path):
                return
            anthropic = _is_anthropic(path)
            if not self._authorized(anthropic):
                self._error(
                    401,
                    "authentication_error" if anthropic else "invalid_request_error",
                    "Incorrect API key provided",
                    anthropic,
                    code="invalid_api_key",
                )
                return
            if "/batches" in path or path.startswith("/v1/files"):
                self._batch_route(method, path, body, raw)
                return
            if method == "GET" and path == "/v1/models" and fake.models is not None:
                self._list_models(anthropic)
                return
            if method == "POST" and path == "/tokenize":
                self._tokenize(body)
                return
            if method != "POST":
                self._error(404, "not_found_error", f"no route {method} {path}", anthropic)
                return
            if not self._model_known(body, anthropic):
                return
            if path.endswith("/chat/completions"):
                self._chat(body)
            elif path.endswith("/completions"):
                self._completions(body)
            elif anthropic:
                self._messages(body)
            else:
                self._error(404, "not_found_error", f"no route {path}", False)
        finally:
            with fake._lock:
                fake.active -= 1

    def _list_models(self, anthropic: bool) -> None:
        """``GET /v1/models`` (only when ``models`` is set; else 404, as a server without a list)."""
        fake = self.fake
        extra = {"max_model_len": fake.max_model_len} if fake.max_model_len and not anthropic else {}
        if anthropic:
            data = [
                {"id": m, "type": "model", "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in fake.models or ()
            ]
            self._send(200, {"data": data, "has_more": False, "first_id": None, "last_id": None})
            return
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake", **extra} for m in fake.models or ()]
        self._send(200, {"object": "list", "data": data})

    def _tokenize(self, body: dict[str, Any]) -> None:
        """vLLM's ``POST /tokenize``: a ``prompt``, or ``messages`` rendered with the server's template."""
        fake = self.fake
        if "messages" in body:
            text = fake.chat_render(body["messages"], bool(body.get("add_generation_prompt", True)))
        else:
            text = str(body.get("prompt", ""))
        ids = [fake.token_id(t) for t in tokenize(text)]
        self._send(200, {"count": len(ids), "max_model_len": fake.max_model_len or 8192, "tokens": ids})

    def _model_known(self, body: dict[str, Any], anthropic: bool) -> bool:
        model = body.get("model")
        if self.fake.models is not None and model not in self.fake.models:
            self._error(
                404, "not_found_error", f"The model `{model}` does not exist", anthropic, code="model_not_found"
            )
            return False
        return True

    # ---------------------------------------------------------------------------------------------
    # Batch APIs: OpenAI files + batches, Anthropic message batches
    # ---------------------------------------------------------------------------------------------
    def _batch_route(self, method: str, path: str, body: dict[str, Any], raw: bytes) -> None:
        parts = path.strip("/").split("/")  # v1, files|batches|messages, ...
        if method == "POST" and parts == ["v1", "files"]:
            self._upload(raw)
        elif method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
            self._file_content(parts[2])
        elif method == "POST" and parts == ["v1", "batches"]:
            self._openai_batch_create(body)
        elif method == "GET" and len(parts) == 3 and parts[1] == "batches":
            self._batch_retrieve(parts[2], anthropic=False)
        elif method == "POST" and parts == ["v1", "messages", "batches"]:
            self._anthropic_batch_create(body)
        elif method == "GET" and len(parts) == 4 and parts[2] == "batches":
            self._batch_retrieve(parts[3], anthropic=True)
        elif method == "GET" and len(parts) == 5 and parts[2] == "batches" and parts[4] == "results":
            self._anthropic_results(parts[3])
        else:
            self._error(404, "not_found_error", f"no route {method} {path}", _is_anthropic(path))

    def _upload(self, raw: bytes) -> None:
        """``POST /v1/files`` (multipart/form-data: ``purpose`` and ``file``)."""
        from email import policy
        from email.parser import BytesParser

        head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + raw)
        fields: dict[str, Any] = {}
        filename = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                filename = part.get_filename()
                fields["file"] = part.get_payload(decode=True)
            elif name:
                fields[name] = part.get_payload(decode=True).decode()
        if "file" not in fields or fields.get("purpose") not in ("batch", "fine-tune", "assistants", "user_data"):
            self._error(400, "invalid_request_error", "'file' and a valid 'purpose' are required", False)
            return
        fake = self.fake
        with fake._lock:
            file_id = f"file-{len(fake.files) + 1:06d}"
            fake.files[file_id] = {"data": fields["file"], "purpose": fields["purpose"], "filename": filename}
        self._send(200, _file_object(file_id, fake.files[file_id]))

    def _file_content(self, file_id: str) -> None:
        entry = self.fake.files.get(file_id)
        if entry is None:
            self._error(404, "invalid_request_error", f"No such File object: {file_id}", False)
            return
        data = entry["data"]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _openai_batch_create(self, body: dict[str, Any]) -> None:
        fake = self.fake
        entry = fake.files.get(body.get("input_file_id") or "")
        if entry is None or entry["purpose"] != "batch":
            self._error(400, "invalid_request_error", f"Invalid 'input_file_id': {body.get('input_file_id')!r}", False)
            return
        endpoint = body.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
            self._error(400, "invalid_request_error", f"Invalid 'endpoint': {endpoint!r}", False)
            return
        if body.get("completion_window") != "24h":
            self._error(400, "invalid_request_error", "Invalid 'completion_window': only '24h' is supported", False)
            return
        requests, errors = [], []
        seen: set[str] = set()
        for number, line in enumerate(entry["data"].decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "line": number, "message": "invalid JSON", "param": None})
                continue
            if item.get("url") != endpoint or item.get("method") != "POST":
                errors.append(
                    {"code": "invalid_url", "line": number, "message": "url must match the endpoint", "param": "url"}
                )
            elif item.get("custom_id") in seen:
                errors.append(
                    {"code": "duplicate_custom_id", "line": number, "message": "duplicate custom_id", "param": None}
                )
            seen.add(item.get("custom_id"))
            requests.append(item)
        with fake._lock:
            batch_id = f"batch_{len(fake.batches) + 1:06d}"
            now = int(time.time())
            obj = {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "errors": {"object": "list", "data": errors} if errors else None,
                "input_file_id": body["input_file_id"],
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "expires_at": now + 86400,
                "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            fake.batches[batch_id] = {"kind": "openai", "object": obj, "polls": 0, "requests": requests}
        self._send(200, obj)

    def _anthropic_batch_create(self, body: dict[str, Any]) -> None:
        fake = self.fake
        requests = body.get("requests") or []
        if not requests:
            self._error(400, "invalid_request_error", "requests: at least one request is required", True)
            return
        ids = [r.get("custom_id") for r in requests]
        if len(set(ids)) != len(ids) or not all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(i)) for i in ids):
            self._error(400, "invalid_request_error", "requests: custom_id values must be unique and valid", True)
            return
        with fake._lock:
            batch_id = f"msgbatch_{len(fake.batches) + 1:06d}"
            now = time.time()
            obj = {
                "id": batch_id,
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(requests),
                    "succeeded": 0,
                    "errored": 0,
                    "canceled": 0,
                    "expired": 0,
                },
                "ended_at": None,
                "created_at": _rfc3339(now),
                "expires_at": _rfc3339(now + 86400),
                "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": None,
            }
            fake.batches[batch_id] = {"kind": "anthropic", "object": obj, "polls": 0, "requests": requests}
        self._send(200, obj)

    def _batch_retrieve(self, batch_id: str, anthropic: bool) -> None:
        """A poll: the batch is processed when it has been retrieved ``fake.batch_polls`` times."""
        fake = self.fake
        batch = fake.batches.get(batch_id)
        if batch is None or (batch["kind"] == "anthropic") != anthropic:
            self._error(404, "not_found_error", f"No batch found with id '{batch_id}'", anthropic)
            return
        with fake._lock:
            batch["polls"] += 1
            due = batch["polls"] >= fake.batch_polls and not batch.get("done")
            if due:
                batch["done"] = True
        if due:
            self._process_batch(batch_id, batch)
        obj = batch["object"]
        if not batch.get("done") and not anthropic and obj["status"] == "validating":
            obj["status"] = "in_progress"
        self._send(200, obj)

    def _answer(self, kind: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Run one batched request through the same code as a direct call; capture its answer."""
        self._capture: list[tuple[int, Any]] | None = []
        try:
            anthropic = kind == "anthropic"
            if self._model_known(body, anthropic):
                if anthropic:
                    self._messages(body)
                else:
                    self._chat(body)
            return self._capture[-1]
        finally:
            self._capture = None

    def _process_batch(self, batch_id: str, batch: dict[str, Any]) -> None:
        fake = self.fake
        obj = batch["object"]
        if batch["kind"] == "openai":
            if obj["errors"]:
                obj.update(status="failed", failed_at=int(time.time()))
                return
            outputs, failures, expired = [], [], 0
            for n, item in enumerate(batch["requests"]):
                cid, body = item["custom_id"], item.get("body") or {}
                fake.batch_log.append({"batch": batch_id, "custom_id": cid, "body": body})
                fault = fake.batch_fault_fn(cid, body) if fake.batch_fault_fn else None
                line: dict[str, Any] = {"id": f"batch_req_{batch_id}_{n}", "custom_id": cid}
                if fault and fault.get("expired"):
                    expired += 1
                    line.update(
                        response=None,
                        error={
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    )
                    failures.append(line)
                    continue
                if fault and "status" in fault:
                    status = int(fault["status"])
                    payload: Any = {
                        "error": {"message": fault.get("message") or f"injected {status}", "type": "api_error"}
                    }
                else:
                    status, payload = self._answer("openai", body)
                line.update(response={"status_code": status, "request_id": f"req_{n}", "body": payload}, error=None)
                (outputs if status == 200 else failures).append(line)
            with fake._lock:
                out_id = err_id = None
                for lines, name in ((outputs, "output"), (failures, "error")):
                    if lines:
                        file_id = f"file-{len(fake.files) + 1:06d}"
                        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                        fake.files[file_id] = {"data": data, "purpose": f"batch_{name}", "filename": f"{name}.jsonl"}
                        if name == "output":
                            out_id = file_id
                        else:
                            err_id = file_id
            now = int(time.time())
            obj.update(
                status="expired" if expired else "completed",
                output_file_id=out_id,
                error_file_id=err_id,
                completed_at=now,
                request_counts={"total": len(batch["requests"]), "completed": len(outputs), "failed": len(failures)},
            )
            return
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for item in batch["requests"]:
            cid, params = item["custom_id"], item.get("params") or {}
            fake.batch_log.append({"batch": batch_id, "custom_id": cid, "body": params})
            fault = fake.batch_fault_fn(cid, params) if fake.batch_fault_fn else None
            if fault and fault.get("expired"):
                result: dict[str, Any] = {"type": "expired"}
            elif fault and "status" in fault:
                message = fault.get("message") or f"injected {fault['status']}"
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": message}},
                }
            else:
                status, payload = self._answer("anthropic", params)
                result = (
                    {"type": "succeeded", "message": payload}
                    if status == 200
                    else {"type": "errored", "error": {**payload, "request_id": None}}
                )
            counts[result["type"]] += 1
            lines.append({"custom_id": cid, "result": result})
        batch["results"] = "".join(json.dumps(line) + "\n" for line in lines).encode()
        obj.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=_rfc3339(time.time()),
            results_url=f"{fake.root}/v1/messages/batches/{batch_id}/results",
        )

    def _anthropic_results(self, batch_id: str) -> None:
        batch = self.fake.batches.get(batch_id)
        if batch is None or batch["kind"] != "anthropic":
            self._error(404, "not_found_error", f"No batch found with id '{batch_id}'", True)
            return
        if "results" not in batch:
            self._error(404, "not_found_error", "results are not available until the batch has ended", True)
            return
        data = batch["results"]
        self.send_response(200)
        self.send_header("Content-Type", "application/binary")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ---------------------------------------------------------------------------------------------
    def _authorized(self, anthropic: bool) -> bool:
        key = self.fake.api_key
        if key is None:
            return True
        bearer = self.headers.get("Authorization", "")
        return bearer == f"Bearer {key}" or (anthropic and self.headers.get("x-api-key") == key)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if self._capture is not None:  # a request inside a batch: its answer goes in the results file
            self._capture.append((status, payload))
            return
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self,
        status: int,
        kind: str,
        message: str,
        anthropic: bool,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if anthropic:
            payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        self._send(status, payload, headers)

    def _apply_fault(self, fault: dict[str, Any], path: str) -> bool:
        """Act out one injected fault; True when the request is answered (or dropped) by it."""
        anthropic = _is_anthropic(path)
        if "delay" in fault:
            time.sleep(float(fault["delay"]))
        if "status" in fault:
            status = int(fault["status"])
            headers = {}
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            if fault.get("retry_after_ms") is not None:
                headers["retry-after-ms"] = str(fault["retry_after_ms"])
            kinds = {
                429: "rate_limit_error",
                500: "api_error",
                503: "api_error",
                529: "overloaded_error",
                400: "invalid_request_error",
                401: "authentication_error",
                404: "not_found_error",
            }
            message = fault.get("message") or f"injected {status}"
            self._error(status, kinds.get(status, "api_error"), message, anthropic, headers=headers)
            return True
        if fault.get("truncate"):
            data = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) + 200))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        if fault.get("malformed"):
            data = b'{"id": "x", "choices": [ this is not json'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        if fault.get("disconnect"):
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        return False

    # ---------------------------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.fake
        messages = body.get("messages") or []
        k = int(body.get("top_logprobs") or 0)
        if k > fake.max_top_logprobs:
            self._error(
                400,
                "invalid_request_error",
                f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                f"{fake.max_top_logprobs}, but got {k} instead.",
                False,
                code="integer_above_max_value",
            )
            return
        if not messages:
            self._error(400, "invalid_request_error", "'messages' must contain at least one message", False)
            return
        text = fake.responder(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 10_000
        tokens = tokenize(text)[: int(max_tokens)]
        text = "".join(tokens)
        finish = "length" if len(tokens) >= int(max_tokens) else "stop"
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        cut = min((text.find(s) for s in stops if s and s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            tokens = tokenize(text)
        prompt = "".join(_content_text(m.get("content")) for m in messages)
        prompt_tokens = len(tokenize(prompt)) + 4 * len(messages)
        head = json.dumps(messages[:-1])
        cached = 0
        if len(messages) > 1 and prompt_tokens >= fake.cache_minimum(body.get("model")) and fake._prefix_cached(head):
            cached = len(tokenize("".join(_content_text(m.get("content")) for m in messages[:-1])))
        logprobs = None
        if body.get("logprobs"):
            logprobs = {
                "content": [
                    {
                        "token": tok,
                        "logprob": math.log(0.7),
                        "bytes": list(tok.encode()),
                        "top_logprobs": [
                            {"token": alt, "logprob": lp, "bytes": list(alt.encode())}
                            for alt, lp in _top_logprobs(tok, k)
                        ]
                        if k
                        else [],
                    }
                    for tok in tokens
                ],
                "refusal": None,
            }
        self._send(
            200,
            {
                "id": f"chatcmpl-{len(fake.log)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(tokens),
                    "total_tokens": prompt_tokens + len(tokens),
                    "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
                "system_fingerprint": "fp_fake",
            },
        )

    # ---------------------------------------------------------------------------------------------
    def _completions(self, body: dict[str, Any]) -> None:
        """vLLM's /v1/completions: echo + logprobs over the prompt, prompt_logprobs, lists of prompts."""
        fake = self.fake
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        k = body.get("logprobs")
        pk = body.get("prompt_logprobs")
        if pk is None and body.get("echo"):
            pk = k
        for value, name in ((k, "logprobs"), (pk, "prompt_logprobs")):
            if value is not None and int(value) > fake.max_top_logprobs:
                self._error(
                    400,
                    "BadRequestError",
                    f"Requested {name} of {value}, which is greater than max allowed: {fake.max_top_logprobs}",
                    False,
                )
                return
        max_tokens = int(body.get("max_tokens") if body.get("max_tokens") is not None else 16)
        choices = []
        n_prompt = n_gen = 0
        for index, prompt in enumerate(prompts):
            ptoks = tokenize(prompt)
            gen: list[str] = []
            gen_dists: list[dict[str, float]] = []
            text = prompt
            for _ in range(max_tokens):
                dist = fake.next_token(text)
                tok = max(dist, key=lambda t: dist[t])
                gen.append(tok)
                gen_dists.append(dist)
                text += tok
            prompt_dists = [None] + [fake.next_token("".join(ptoks[:i])) for i in range(1, len(ptoks))]
            prompt_logprobs = None
            if pk is not None:
                prompt_logprobs = [None] + [
                    self._vllm_position(prompt_dists[i], ptoks[i], int(pk)) for i in range(1, len(ptoks))
                ]
            logprobs = None
            if k is not None:
                toks = (ptoks if body.get("echo") else []) + gen
                dists = (prompt_dists if body.get("echo") else []) + gen_dists
                offsets, pos = [], 0
                for tok in toks:
                    offsets.append(pos)
                    pos += len(tok)
                logprobs = {
                    "text_offset": offsets,
                    "token_logprobs": [None if d is None else _lp(d, t) for t, d in zip(toks, dists, strict=True)],
                    "tokens": toks,
                    "top_logprobs": [
                        None if d is None else _top_dict(d, t, int(k)) for t, d in zip(toks, dists, strict=True)
                    ],
                }
            choices.append(
                {
                    "index": index,
                    "text": (prompt if body.get("echo") else "") + "".join(gen),
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "prompt_logprobs": prompt_logprobs,
                }
            )
            n_prompt += len(ptoks)
            n_gen += len(gen)
        self._send(
            200,
            {
                "id": f"cmpl-{len(fake.log)}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen},
            },
        )

    def _vllm_position(self, dist: dict[str, float], actual: str, k: int) -> dict[str, Any]:
        """vLLM's prompt_logprobs entry: top-k token ids plus the actual token, with ranks."""
        ranked = sorted(dist.items(), key=lambda kv: -kv[1])
        out: dict[str, Any] = {}
        for rank, (tok, p) in enumerate(ranked[:k], start=1):
            out[str(self.fake.token_id(tok))] = {"logprob": math.log(p), "rank": rank, "decoded_token": tok}
        if actual not in dict(ranked[:k]):
            rank = next((r for r, (t, _) in enumerate(ranked, start=1) if t == actual), len(ranked) + 1)
            out[str(self.fake.token_id(actual))] = {"logprob": _lp(dist, actual), "rank": rank, "decoded_token": actual}
        return out

    # ---------------------------------------------------------------------------------------------
    def _messages(self, body: dict[str, Any]) -> None:
        fake = self.fake
        messages = body.get("messages") or []
        if "max_tokens" not in body:
            self._error(400, "invalid_request_error", "max_tokens: Field required", True)
            return
        if not messages or messages[0].get("role") != "user":
            self._error(400, "invalid_request_error", 'messages: first message must use the "user" role', True)
            return
        last = messages[-1]
        prefill = _content_text(last.get("content")) if last.get("role") == "assistant" else ""
        if prefill and prefill != prefill.rstrip():
            self._error(
                400,
                "invalid_request_error",
                "messages: final assistant content cannot end with trailing whitespace",
                True,
            )
            return
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= float(temperature) <= 1:
            self._error(400, "invalid_request_error", "temperature: range: 0..1", True)
            return
        text = fake.responder(body)
        tokens = tokenize(text)[: int(body["max_tokens"])]
        text = "".join(tokens)
        stop_reason, stop_sequence = ("max_tokens" if len(tokens) >= int(body["max_tokens"]) else "end_turn"), None
        for s in body.get("stop_sequences") or []:
            if s in text:
                text, stop_reason, stop_sequence = text[: text.find(s)], "stop_sequence", s
        # Prompt cache: everything up to the last block marked with cache_control is the cached prefix.
        system = body.get("system")
        blocks: list[tuple[str, bool]] = []
        if isinstance(system, str):
            blocks.append((system, False))
        elif isinstance(system, list):
            blocks += [(b.get("text", ""), "cache_control" in b) for b in system]
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                blocks.append((content, False))
            else:
                blocks += [(b.get("text", ""), "cache_control" in b) for b in content]
        last_mark = max((i for i, (_, marked) in enumerate(blocks) if marked), default=-1)
        prefix = "".join(t for t, _ in blocks[: last_mark + 1])
        total = len(tokenize("".join(t for t, _ in blocks))) + 3 * len(messages)
        cache_read = cache_write = 0
        if last_mark >= 0 and len(tokenize(prefix)) >= fake.cache_minimum(body.get("model")):
            n_prefix = len(tokenize(prefix))
            if fake._prefix_cached(prefix):
                cache_read = n_prefix
            else:
                cache_write = n_prefix
        self._send(
            200,
            {
                "id": f"msg_{len(fake.log)}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": {
                    "input_tokens": total - cache_read - cache_write,
                    "output_tokens": len(tokens),
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                },
            },
        )


def _is_anthropic(path: str) -> bool:
    return path.endswith("/messages") or path.startswith("/v1/messages/")


def _rfc3339(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _file_object(file_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(entry["data"]),
        "created_at": int(time.time()),
        "filename": entry["filename"] or "upload.jsonl",
        "purpose": entry["purpose"],
        "status": "processed",
    }


def _lp(dist: dict[str, float], token: str) -> float:
    return math.log(dist[token]) if token in dist else math.log(1e-4)


def _top_dict(dist: dict[str, float], actual: str, k: int) -> dict[str, float]:
    """Legacy completions top_logprobs: the top k decoded tokens plus the actual one (k + 1 at most)."""
    ranked = sorted(dist.items(), key=lambda kv: -kv[1])[:k]
    out = {tok: math.log(p) for tok, p in ranked}
    out.setdefault(actual, _lp(dist, actual))
    return out


if __name__ == "__main__":  # a standalone server for benchmarks and manual runs: prints its port
    import argparse

    parser = argparse.ArgumentParser(description="Loopback fake OpenAI/vLLM/Anthropic server")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--simulate", action="store_true", help="answer as neuronbench's explainer and simulator (benchmarks)"
    )
    args = parser.parse_args()
    server = FakeLLMServer(latency_s=args.latency, api_key=args.api_key)
    if args.simulate:
        server.responder = benchmark_responder
        server.next_token = simulating_next_token
    server.start()
    print(server.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
