"""OpenAI-compatible chat client for offline enrichment: retries, JSON-schema answers, a DuckDB cache.

Works against any server that speaks ``/v1/chat/completions`` (llama.cpp, vLLM, Ollama, OpenAI).

Choices made here:

- Transport retries are our own (the ``openai`` client is built with ``max_retries=0``): rate limits
  (429), 5xx, timeouts and connection errors are retried up to ``max_retries`` times with exponential
  backoff ``backoff_s * 2**attempt`` times a random factor in [0.5, 1.5) (a 429's ``Retry-After`` is
  honoured when longer, capped at 60 s). Other 4xx fail at once. When retries run out an
  ``LLMError`` is raised: a dead server stops the run instead of silently degrading every answer;
  the cache keeps everything answered so far, so a rerun resumes where it stopped.
- Circuit breaker: once one request has exhausted its retries, the client is *open*: no request
  starts, no retry is sent, and threads sleeping in a backoff wake up and fail at once. A stage whose
  server accepts connections and never answers therefore fails within a bounded time: the first
  request's ``(max_retries + 1) * timeout_s`` plus its backoffs, plus at most one ``timeout_s`` for
  requests already in flight (with the defaults, 60 s and 4 retries: 300 s + at most 22.5 s of backoff +
  60 s, about 6.5 minutes at most; before, a worker thread picked up the next prompt and ran its
  full retries too).
- Structured output uses ``response_format={"type": "json_schema", ..., "strict": True}``; servers
  that reject that dialect with a 400/422/500 naming it (llama-cpp-python's server takes ``{"type": "json_object",
  "schema": ...}``) are re-asked in the other dialect once and spoken to in it from then on
  (``response_format_style='auto'``). Servers that ignore it are handled by parsing the first JSON object out of the text (code fences and prose
  around it are tolerated); for single-field schemas a bare plain-text answer is also accepted as
  that field's value (the HiD-VAE Figure 5 prompt asks for the tag "in plain text").
- An answer that fails pydantic validation (e.g. a tag outside the candidate enum) is retried
  ``invalid_answer_retries`` times inside the same conversation, quoting the bad answer and the
  validation error; after that ``InvalidAnswerError`` is raised (``choose`` turns it into ``None``).
- The cache stores validated answers only, keyed by sha256(base URL + model + canonical JSON of the
  original messages + canonical JSON of the schema): another server with the same model name is
  asked afresh, never served the first server's answers. Each answer is inserted (autocommit) as soon as it is
  validated, so a crash loses nothing already answered. Invalid answers are not cached: a rerun
  (perhaps with a better model) asks again. DuckDB allows one writer process per file, so two
  processes must not share one ``cache_path`` at the same time.
- The API key is read from the environment variable named by ``api_key_env``; it is never stored in
  params, stats, logs or ``repr``. A loopback ``base_url`` without the variable gets a dummy key;
  any other server without it is a configuration error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar
from urllib.parse import urlparse

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from semid_pipeline.core.params import StrictParams
from semid_pipeline.core.progress import ProgressFn, Throttle

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_DUMMY_KEY = "sk-local-no-key"
_MAX_RETRY_AFTER_S = 60.0
_SYSTEM_PROMPT = "You are a precise classification assistant. Answer with a JSON object only."

Message = dict[str, Any]


class LLMParams(StrictParams):
    """Where the chat model lives and how hard to try."""

    base_url: str = Field("http://127.0.0.1:8080/v1", description="OpenAI-compatible API root (ends in /v1).")
    model: str = Field(
        "Qwen3-235B-A22B-Instruct-2507",
        description="Served model name (HiD-VAE appendix B uses Qwen3-235B-A22B-Instruct-2507).",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key; a loopback server gets a dummy key when unset.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.")
    backoff_s: float = Field(1.0, ge=0, description="First backoff delay; doubles each retry, with jitter.")
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once, over all threads sharing the client.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy, reproducible).")
    max_tokens: Optional[int] = Field(512, ge=1, description="Cap on completion tokens (None = server default).")
    cache_path: Optional[str] = Field(None, description="DuckDB answer-cache file; None disables the cache.")
    structured_output: bool = Field(
        True, description="Send a response_format with the JSON schema; turn off for servers that reject any."
    )
    response_format_style: Literal["auto", "json_schema", "json_object"] = Field(
        "auto",
        description="'json_schema' (OpenAI, vLLM, llama.cpp's C++ server, Ollama); 'json_object' sends "
        "{type: json_object, schema} (llama-cpp-python's server); 'auto' starts with json_schema and switches "
        "to json_object for the client's lifetime when the server answers 400/422 to it.",
    )
    invalid_answer_retries: int = Field(
        1, ge=0, description="Times an answer that fails validation is re-asked before giving up."
    )


class LLMError(RuntimeError):
    """The server could not be reached or refused the request (after the allowed retries)."""


class InvalidAnswerError(LLMError):
    """The model kept answering something that does not validate against the requested schema."""


@dataclass
class LLMStats:
    """Counters of one client. ``calls`` counts HTTP requests sent (retries included); ``seconds`` sums
    the wall time of those requests over all threads."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    invalid_answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal structures give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_loopback(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "") in _LOOPBACK_HOSTS


def json_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with ``additionalProperties: false`` at the top, as strict mode needs."""
    schema = model.model_json_schema()
    schema.setdefault("additionalProperties", False)
    return schema


def choice_model(candidates: Sequence[str]) -> type[BaseModel]:
    """A one-field model ``{"tag": <one of candidates>}``; its schema is a string enum."""
    return _choice_model(tuple(candidates))


@functools.lru_cache(maxsize=4096)
def _choice_model(candidates: tuple[str, ...]) -> type[BaseModel]:
    return create_model(
        "TagChoice",
        __config__=ConfigDict(extra="forbid"),
        tag=(Literal[candidates], Field(description="Exactly one of the candidate tags.")),
    )


def parse_answer(text: str, schema_model: type[M]) -> M:
    """Validates ``text`` against ``schema_model``.

    Tries, in order: the whole text as JSON; each JSON object embedded in the text (for servers that
    ignore ``response_format`` and wrap the JSON in prose or code fences); for single-field models, the
    stripped text as that field's value. Raises ``ValueError`` (``ValidationError`` is one) on failure.
    """
    try:
        return schema_model.model_validate_json(text)
    except ValidationError as first_error:
        error: ValueError = first_error
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos != -1:
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            try:
                return schema_model.model_validate(obj)
            except ValidationError as err:
                error = err
        pos = text.find("{", pos + 1)
    fields = list(schema_model.model_fields)
    if len(fields) == 1:
        bare = text.strip().strip("`").strip().strip("\"'").strip()
        try:
            return schema_model.model_validate({fields[0]: bare})
        except ValidationError as err:
            error = err
    raise error


def _rejects_format(err: "openai.APIStatusError") -> bool:
    """Whether a 400/422 answer is about the response_format (so another dialect may work)."""
    if err.status_code not in (400, 422, 500):  # llama-cpp-python answers a bad response_format with 500
        return False
    try:
        text = err.response.text
    except Exception:  # a response without a readable body
        text = str(err)
    return "response_format" in text and ("json_schema" in text or "json_object" in text)


def _describe_invalid(err: ValueError) -> str:
    """A one-line reason to quote back to the model."""
    if isinstance(err, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in err.errors()[:3]
        )[:500]
    return str(err)[:500] or type(err).__name__


class _AnswerCache:
    """DuckDB table ``llm_cache``; one connection, every access under one lock."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        import duckdb

        self._lock = threading.Lock()
        self._con = duckdb.connect(path)
        self._con.execute(
            "create table if not exists llm_cache(key text primary key, model text, prompt_hash text, "
            "response json, created_at timestamp)"
        )

    def get(self, key: str) -> Optional[str]:
        with self._lock:
            row = self._con.execute("select response from llm_cache where key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, model: str, prompt_hash: str, response: str) -> None:
        with self._lock:
            self._con.execute(
                "insert or replace into llm_cache values (?, ?, ?, ?, now())", [key, model, prompt_hash, response]
            )

    def close(self) -> None:
        with self._lock:
            self._con.close()


class LLMClient:
    """Thread-safe chat client; see the module docstring for retry, validation and cache rules."""

    def __init__(self, params: Optional[LLMParams] = None):
        self.params = params or LLMParams()
        api_key = os.environ.get(self.params.api_key_env)
        if not api_key:
            if not _is_loopback(self.params.base_url):
                raise ValueError(
                    f"environment variable {self.params.api_key_env} is not set; it must hold the API key "
                    f"for {self.params.base_url} (set it to any value for a server without authentication)"
                )
            api_key = _DUMMY_KEY
        self._openai = openai.OpenAI(
            base_url=self.params.base_url, api_key=api_key, timeout=self.params.timeout_s, max_retries=0
        )
        self._cache = _AnswerCache(self.params.cache_path) if self.params.cache_path else None
        self._stats = LLMStats()
        self._stats_lock = threading.Lock()
        self._format_style = "json_object" if self.params.response_format_style == "json_object" else "json_schema"
        # bounds requests in flight over every thread using this client (map() or callers' own threads)
        self._in_flight = threading.BoundedSemaphore(self.params.max_concurrency)
        self._rng = random.Random()
        self._open: Optional[LLMError] = None  # the circuit breaker: set once a request exhausted its retries
        self._opened = threading.Event()

    def __repr__(self) -> str:
        return (
            f"LLMClient(base_url={self.params.base_url!r}, model={self.params.model!r}, "
            f"cache_path={self.params.cache_path!r})"
        )

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the HTTP client and the cache connection."""
        self._openai.close()
        if self._cache is not None:
            self._cache.close()

    @property
    def stats(self) -> dict[str, float]:
        """A snapshot of the counters (no credentials, ever)."""
        with self._stats_lock:
            return asdict(self._stats)

    def stats_since(self, before: dict[str, float]) -> dict[str, float]:
        """Counters accumulated since the snapshot ``before`` (per-run metadata), plus ``tokens``."""
        now = self.stats
        out: dict[str, float] = {k: now[k] - before.get(k, 0) for k in now}
        out["seconds"] = round(out["seconds"], 3)
        out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        return out

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    # -- transport ---------------------------------------------------------------------------------

    def _backoff(self, attempt: int, err: Exception) -> float:
        delay = self.params.backoff_s * (2**attempt) * self._rng.uniform(0.5, 1.5)
        if isinstance(err, openai.RateLimitError):
            retry_after = err.response.headers.get("retry-after", "")
            try:
                delay = max(delay, min(float(retry_after), _MAX_RETRY_AFTER_S))
            except ValueError:
                pass
        return delay

    def _complete(self, messages: list[Message], response_format: Optional[dict[str, Any]]) -> str:
        """One chat completion with transport retries; returns the message content."""
        extra: dict[str, Any] = {}
        use_format = response_format is not None and self.params.structured_output
        if use_format:
            extra["response_format"] = self._styled(response_format)
        if self.params.max_tokens is not None:
            extra["max_tokens"] = self.params.max_tokens
        attempts = self.params.max_retries + 1
        attempt = 0
        while True:
            self._check_circuit()
            start = time.monotonic()
            try:
                with self._in_flight:
                    resp = self._openai.chat.completions.create(
                        model=self.params.model, messages=messages, temperature=self.params.temperature, **extra
                    )
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
                self._count(calls=1, seconds=time.monotonic() - start)
                if use_format and self._switch_dialect(err):
                    extra["response_format"] = self._styled(response_format)
                    continue
                if attempt + 1 == attempts:
                    failure = LLMError(f"{self.params.base_url}: {type(err).__name__} after {attempts} attempts: {err}")
                    self._trip(failure)
                    raise failure from err
                self._check_circuit()
                self._count(retries=1)
                self._opened.wait(self._backoff(attempt, err))  # a backoff ends early when the circuit opens
                attempt += 1
                continue
            except openai.APIStatusError as err:
                self._count(calls=1, seconds=time.monotonic() - start)
                if use_format and self._switch_dialect(err):
                    extra["response_format"] = self._styled(response_format)
                    continue
                raise LLMError(f"{self.params.base_url}: HTTP {err.status_code}: {err}") from err
            usage = resp.usage
            self._count(
                calls=1,
                seconds=time.monotonic() - start,
                prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
                completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            )
            if not resp.choices:
                raise LLMError(f"{self.params.base_url}: response without choices")
            return resp.choices[0].message.content or ""

    def _trip(self, failure: "LLMError") -> None:
        """Opens the circuit: every later request or retry of this client fails at once."""
        with self._stats_lock:
            if self._open is None:
                self._open = failure
        self._opened.set()

    def _check_circuit(self) -> None:
        if self._open is not None:
            raise LLMError(f"{self.params.base_url}: not sent, an earlier request already failed ({self._open})")

    def _switch_dialect(self, err: Exception) -> bool:
        """Switches json_schema -> json_object once when the server rejected the response_format."""
        if (
            isinstance(err, openai.APIStatusError)
            and self.params.response_format_style == "auto"
            and self._format_style == "json_schema"
            and _rejects_format(err)
        ):
            self._format_style = "json_object"  # e.g. llama-cpp-python's server: re-ask in its dialect
            self._count(retries=1)
            return True
        return False

    def _styled(self, response_format: dict[str, Any]) -> dict[str, Any]:
        """The response_format in the dialect this client currently speaks."""
        if self._format_style == "json_object" and response_format.get("type") == "json_schema":
            return {"type": "json_object", "schema": response_format["json_schema"]["schema"]}
        return response_format

    # -- cache -------------------------------------------------------------------------------------

    def _cache_key(self, messages: list[Message], schema: Optional[dict[str, Any]]) -> tuple[str, str]:
        prompt = canonical_json(messages)
        server = self.params.base_url.rstrip("/")
        key = _sha256(f"{server}\n{self.params.model}\n{prompt}\n{canonical_json(schema)}")
        return key, _sha256(prompt)

    def _cache_get(self, key: str) -> Optional[str]:
        if self._cache is None:
            return None
        hit = self._cache.get(key)
        if hit is not None:
            self._count(cache_hits=1)
        return hit

    def _cache_put(self, key: str, prompt_hash: str, response: str) -> None:
        if self._cache is not None:
            self._cache.put(key, self.params.model, prompt_hash, response)

    # -- public API --------------------------------------------------------------------------------

    def chat_json(self, messages: list[Message], schema_model: type[M], schema_name: str) -> M:
        """Asks for an answer matching ``schema_model`` and returns it validated.

        Raises ``InvalidAnswerError`` when the answer is still invalid after ``invalid_answer_retries``
        corrections, ``LLMError`` on transport failure.
        """
        schema = json_schema_for(schema_model)
        key, prompt_hash = self._cache_key(messages, schema)
        cached = self._cache_get(key)
        if cached is not None:
            return schema_model.model_validate_json(cached)
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        conversation = list(messages)
        for _ in range(self.params.invalid_answer_retries + 1):
            content = self._complete(conversation, response_format)
            try:
                answer = parse_answer(content, schema_model)
            except ValueError as err:
                self._count(invalid_answers=1)
                problem = _describe_invalid(err)
                conversation = conversation + [
                    {"role": "assistant", "content": content},
                    {
                        "role": "user",
                        "content": f"That answer is not valid ({problem}). Reply again with only a JSON object "
                        f"that matches this schema: {canonical_json(schema)}",
                    },
                ]
                continue
            self._cache_put(key, prompt_hash, answer.model_dump_json())
            return answer
        raise InvalidAnswerError(
            f"{self.params.base_url}: no valid {schema_name} answer after "
            f"{self.params.invalid_answer_retries + 1} attempts"
        )

    def chat_text(self, messages: list[Message]) -> str:
        """A free-text answer (cached like ``chat_json``, with a null schema)."""
        key, prompt_hash = self._cache_key(messages, None)
        cached = self._cache_get(key)
        if cached is not None:
            return str(json.loads(cached))
        content = self._complete(messages, None)
        self._cache_put(key, prompt_hash, json.dumps(content, ensure_ascii=False))
        return content

    def choose(self, prompt: str, candidates: Sequence[str]) -> Optional[str]:
        """Picks one of ``candidates`` for ``prompt`` through an enum schema.

        Returns ``None`` when the model never produced a valid candidate; a single candidate is
        returned without asking; an empty list gives ``None``. Duplicates are dropped (enums are sets).
        """
        options = list(dict.fromkeys(candidates))
        if len(options) <= 1:
            return options[0] if options else None
        messages = [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        try:
            return self.chat_json(messages, choice_model(options), "tag_choice").tag
        except InvalidAnswerError:
            return None

    def map(self, items: Sequence[T], fn: Callable[[T], R], progress: Optional[ProgressFn] = None) -> list[R]:
        """``[fn(x) for x in items]`` with at most ``max_concurrency`` calls in flight; order is kept.

        The first exception cancels the requests not yet started and is re-raised once the running
        ones finish (their answers are already cached).
        """
        n = len(items)
        if n == 0:
            return []
        results: list[Any] = [None] * n
        report = Throttle(progress)
        pool = ThreadPoolExecutor(max_workers=min(self.params.max_concurrency, n), thread_name_prefix="llm")
        try:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for done, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                s = self.stats
                report(f"llm: {done}/{n} requests done ({s['calls']} calls, {s['cache_hits']} cache hits)")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results
