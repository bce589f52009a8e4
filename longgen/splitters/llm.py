"""Structured prompts from a large language model behind any OpenAI-compatible chat API (the approach of SynCoS
supplementary B and Fig. 8, which used GPT-4o; vLLM, Ollama, LM Studio and others serve the same API).

Conversation: the instruction template (prompts/template_structured_prompt.txt, or `template=` a file of your
own; `$num_prompts` in it is replaced by N) is the system message; the user message holds the scenario and N.
The answer must be a JSON object `{"global": str, "local": [N str]}`. It is asked for with structured outputs
(`response_format` json_schema), falling back to a JSON object and then to plain text when the server rejects
the format (`response_format: auto`).

Failures, each ending in one clear line:
- an answer that does not parse or breaks the story rules is sent back once with the problem stated; a second
  bad answer fails, quoting the problem;
- timeouts, connection errors, rate limits (429) and server errors (5xx) are retried `max_retries` times with
  exponential backoff (or the server's Retry-After), then fail; the client's own retries are off so these
  bounds are the only ones.

The API key is read from the environment variable named by `api_key_env` at call time and handed to the client
only; it is not an option, so it cannot reach the saved config, the story, the manifest or the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from longgen.errors import UsageError
from longgen.splitters.base import Splitter, check_num_prompts, check_scenario
from longgen.splitters.cache import StoryCache, cache_key
from longgen.story import Story

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "template_structured_prompt.txt"
_FORMATS = ("auto", "json_schema", "json_object", "text")
_MAX_WAIT_S = 30.0


class InvalidAnswer(ValueError):
    """The model's answer is not a valid story; the message is fed back to the model."""


def load_template(template: str | None) -> tuple[str, str]:
    """(text, label) of the instruction template: the shipped one, or a file the user names."""
    if template in (None, ""):
        text = resources.files("longgen.prompts").joinpath(DEFAULT_TEMPLATE).read_text(encoding="utf-8")
        return text, DEFAULT_TEMPLATE
    path = Path(str(template)).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"splitter.template={template}: cannot read it ({getattr(exc, 'strerror', None) or exc}); give a text file with the instructions") from None
    if not text.strip():
        raise UsageError(f"splitter.template={template} is empty; write the instructions for the LLM in it")
    return text, str(path)


def redact_url(url: str | None) -> str | None:
    """The URL without user:password or query string, safe to record."""
    if not url:
        return url
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(" .")


def parse_answer(content: str | None, num_prompts: int) -> Story:
    """The model's answer as a Story, or InvalidAnswer saying exactly what is wrong."""
    if content is None or not content.strip():
        raise InvalidAnswer("the answer was empty")
    text = content.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    if fence:
        text = fence.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0:
        raise InvalidAnswer("the answer is not a JSON object (no {...} found)")
    try:
        data = json.loads(text[start : end + 1] if end > start else text[start:])
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InvalidAnswer("the answer must be a JSON object with keys \"global\" and \"local\"")
    glob, local = data.get("global"), data.get("local")
    if not isinstance(glob, str) or not glob.strip():
        raise InvalidAnswer('"global" must be a non-empty string')
    if not isinstance(local, list):
        raise InvalidAnswer('"local" must be a list of strings')
    if len(local) != num_prompts:
        raise InvalidAnswer(f'"local" must hold exactly {num_prompts} prompts, it holds {len(local)}')
    for i, p in enumerate(local, 1):
        if not isinstance(p, str) or not p.strip():
            raise InvalidAnswer(f"local prompt {i} is empty or not a string")
        if _normal(glob) not in _normal(p):
            raise InvalidAnswer(f"local prompt {i} does not contain the global prompt word for word; start it with the exact global prompt")
    return Story(global_prompt=glob.strip(), local_prompts=[p.strip() for p in local])


def _schema() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "structured_prompt",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"global": {"type": "string"}, "local": {"type": "array", "items": {"type": "string"}}},
                "required": ["global", "local"],
                "additionalProperties": False,
            },
        },
    }


class LLMSplitter(Splitter):
    """Split a scenario with a chat model behind an OpenAI-compatible API. Options are checked here; the key is
    read from the environment when splitting."""

    name = "llm"

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.2,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 2048,
        response_format: str = "auto",
        template: str | None = None,
        cache: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise UsageError("splitter.model must name the chat model, e.g. splitter.model=gpt-4o or a local model name")
        if not isinstance(api_key_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            raise UsageError(f"splitter.api_key_env={api_key_env!r} must be the NAME of an environment variable (the key itself never goes in the config)")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise UsageError(f"splitter.temperature={temperature!r} must be a number from 0 to 2")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise UsageError(f"splitter.timeout={timeout!r} must be a positive number of seconds")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 10:
            raise UsageError(f"splitter.max_retries={max_retries!r} must be a whole number from 0 to 10")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0:
            raise UsageError(f"splitter.backoff={backoff!r} must be a non-negative number of seconds")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 64:
            raise UsageError(f"splitter.max_tokens={max_tokens!r} must be a whole number >= 64")
        if response_format not in _FORMATS:
            raise UsageError(f"splitter.response_format={response_format!r}: use one of {', '.join(_FORMATS)}")
        if base_url is not None and not re.match(r"^https?://", str(base_url)):
            raise UsageError(f"splitter.base_url={redact_url(base_url)!r} must start with http:// or https:// (e.g. http://127.0.0.1:11434/v1)")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.temperature = float(temperature)
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_tokens = max_tokens
        self.response_format = response_format
        self.template_text, self.template_label = load_template(template)
        self.cache = cache
        self._format = "json_schema" if response_format == "auto" else response_format
        self._attempts = 0

    # ------------------------------------------------------------------ api key and client
    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            return key
        if self.base_url:
            # local servers (Ollama, vLLM, LM Studio) ignore the key, but the client needs a value
            return "no-key"
        raise UsageError(
            f"splitter=llm needs an API key in the environment: export {self.api_key_env}=… (or name another "
            f"variable with splitter.api_key_env=…), point splitter.base_url at a local OpenAI-compatible server, "
            f"or use splitter=offline"
        )

    def _client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self._api_key(), timeout=self.timeout, max_retries=0)

    # ------------------------------------------------------------------ one request with bounded retries
    def _request(self, client, messages: list[dict[str, str]]) -> str | None:
        import openai

        failures = 0
        while True:
            kwargs: dict[str, Any] = {}
            if self._format == "json_schema":
                kwargs["response_format"] = _schema()
            elif self._format == "json_object":
                kwargs["response_format"] = {"type": "json_object"}
            self._attempts += 1
            try:
                response = client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens, **kwargs
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if self.response_format == "auto" and self._format != "text":
                    fallback = "json_object" if self._format == "json_schema" else "text"
                    log.info("the server refused response_format=%s (HTTP %s); trying %s", self._format, exc.status_code, fallback)
                    self._format = fallback
                    continue
                raise UsageError(f"splitter=llm: {self._where()} rejected the request (HTTP {exc.status_code}: {_short(exc)}); check splitter.model and splitter.response_format") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise UsageError(
                    f"splitter=llm: {self._where()} refused the API key from ${self.api_key_env} (HTTP {exc.status_code}); set a valid key"
                ) from None
            except openai.NotFoundError:
                raise UsageError(
                    f"splitter=llm: {self._where()} answered 404: no model {self.model!r} there, or splitter.base_url lacks the /v1 path"
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                if isinstance(exc, openai.APIStatusError) and not isinstance(exc, openai.RateLimitError) and status not in (408, 409) and status < 500:
                    raise UsageError(f"splitter=llm: {self._where()} answered HTTP {status}: {_short(exc)}") from None
                failures += 1
                reason = self._reason(exc)
                if failures > self.max_retries:
                    raise UsageError(
                        f"splitter=llm: no answer from {self._where()} after {failures} attempt(s): {reason}; check the "
                        f"server and splitter.base_url, raise splitter.timeout (now {self.timeout:g} s) or "
                        f"splitter.max_retries (now {self.max_retries}), or use splitter=offline"
                    ) from None
                wait = self._wait(failures, exc)
                log.warning("LLM request failed (%s); retry %d of %d in %.1f s", reason, failures, self.max_retries, wait)
                time.sleep(wait)
                continue
            if not response.choices:
                return None
            return response.choices[0].message.content

    def _where(self) -> str:
        return f"model {self.model!r} at {redact_url(self.base_url) or 'the default OpenAI endpoint'}"

    def _reason(self, exc: Exception) -> str:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return f"timed out after {self.timeout:g} s"
        if isinstance(exc, openai.RateLimitError):
            return "rate limited (HTTP 429)"
        if isinstance(exc, openai.APIStatusError):
            return f"server error HTTP {exc.status_code}"
        return f"connection failed ({_short(exc)})"

    def _wait(self, failures: int, exc: Exception) -> float:
        wait = self.backoff * 2 ** (failures - 1)
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header is not None:
            try:
                wait = float(header)
            except ValueError:
                pass
        return max(0.0, min(wait, _MAX_WAIT_S))

    # ------------------------------------------------------------------ split
    def _messages(self, scenario: str, num_prompts: int) -> list[dict[str, str]]:
        system = string.Template(self.template_text).safe_substitute(num_prompts=num_prompts)
        user = f"Scenario: {scenario}\nNumber of local prompts: {num_prompts}"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def describe(self) -> dict[str, Any]:
        return {
            "splitter": "llm",
            "model": self.model,
            "base_url": redact_url(self.base_url),
            "temperature": self.temperature,
            "template": self.template_label,
            "template_sha256": hashlib.sha256(self.template_text.encode("utf-8")).hexdigest()[:16],
            "response_format": self._format,
        }

    def split(self, scenario: str, num_prompts: int) -> Story:
        scenario = check_scenario(scenario)
        num_prompts = check_num_prompts(num_prompts)
        key = cache_key(scenario, num_prompts, self.model, self.template_text, self.temperature)
        store = StoryCache() if self.cache else None
        if store is not None:
            hit = store.load(key)
            if hit is not None and hit.num_events == num_prompts and not hit.multi_shot:
                log.info("splitter=llm: reusing the cached story %s (splitter.cache=false asks the model again)", store.path(key))
                hit.source = {**hit.source, "cache": "hit"}
                return hit

        client = self._client()
        self._attempts = 0
        messages = self._messages(scenario, num_prompts)
        answer = self._request(client, messages)
        try:
            story = parse_answer(answer, num_prompts)
        except InvalidAnswer as first:
            log.warning("the LLM's answer is not a valid story (%s); asking once more", first)
            messages += [
                {"role": "assistant", "content": answer or ""},
                {
                    "role": "user",
                    "content": f"That answer cannot be used: {first}. Reply again with only the JSON object "
                    f'{{"global": ..., "local": [...]}} holding exactly {num_prompts} local prompts, each starting with the global prompt.',
                },
            ]
            answer = self._request(client, messages)
            try:
                story = parse_answer(answer, num_prompts)
            except InvalidAnswer as second:
                start = " ".join((answer or "").split())[:120]
                raise UsageError(
                    f"splitter=llm: {self._where()} gave no valid story after one retry: {second} (answer began "
                    f"{start!r}); try another splitter.model, a lower splitter.temperature, or splitter=offline"
                ) from None
        story.scenario = scenario
        story.source = {**self.describe(), "requests": self._attempts, "cache": "miss" if store is not None else "off", "cache_key": key[:16]}
        if store is not None:
            store.save(key, story)
        return story


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
