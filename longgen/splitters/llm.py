"""Structured prompts from a large language model behind any OpenAI-compatible chat API (the approach of SynCoS
supplementary B and Fig. 8, which used GPT-4o; vLLM, Ollama, LM Studio and others serve the same API).

Conversation: the instruction template (prompts/template_structured_prompt.txt, or `template=` a file of your
own; `$num_prompts` in it is replaced by N) is the system message; the user message holds the scenario and N.
The answer must be a JSON object `{"global": str, "local": [N str]}`. It is asked for with structured outputs
(`response_format` json_schema), falling back to a JSON object and then to plain text when the server rejects
the format (`response_format: auto`).

Answers are read as real models write them (`parse_answer`): reasoning before the answer (<think>…</think>),
prose or code fences around the object, near-miss key names ("global_prompt", "locals"), JSON5 leniency (trailing
commas, single quotes, comments; the json5 package), prompts written as {"prompt": "…"}, several objects of which
exactly one is a valid story. A server that only streams (it refuses a plain request naming `stream`, or sends
server-sent events anyway) is asked again with stream=true.

Failures, each ending in one clear line:
- an answer that does not parse or breaks the story rules is sent back once with the problem stated; a second
  bad answer fails, quoting the problem;
- a refusal (the `refusal` field, or an answer that opens "I'm sorry, I can't…"), an answer cut off by
  max_tokens (finish_reason=length) or stopped by a content filter, an empty `choices` list, an HTML page or
  other body that is not a chat completion: one line naming it, no retry;
- timeouts, connection errors, rate limits (429) and server errors (5xx) are retried `max_retries` times with
  exponential backoff (or the server's Retry-After), then fail; the client's own retries are off so these
  bounds are the only ones;
- every request has a wall-clock deadline of `timeout` seconds for the whole answer, not only between two reads
  (a server that trickles a byte now and then cannot hold the split), and an answer is cut off past
  `answer_byte_limit(max_tokens)` bytes (a runaway or endless answer cannot fill the memory): a deadline counts
  as a timeout (retried), an oversized answer fails at once.

The API key is read from the environment variable named by `api_key_env` at call time and handed to the client
only, which sends it to whatever `base_url` names; it is not an option, so it cannot reach the saved config, the
story, the manifest or the log, and every server text quoted in a message is scrubbed of it (longgen.redact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import json5

from longgen.errors import UsageError
from longgen.redact import env_name_problem, remember, scrub
from longgen.splitters.base import Splitter, check_num_prompts, check_scenario
from longgen.splitters.cache import StoryCache, cache_key
from longgen.story import Story, comparable

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "template_structured_prompt.txt"
#: the instructions for the multi-shot form (LCT §3.2.1: characters, environment, story, shots with [SHOT CUT])
DEFAULT_SHOT_TEMPLATE = "template_multi_shot.txt"
#: where the openai client sends requests when neither base_url nor $OPENAI_BASE_URL is set
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_FORMATS = ("auto", "json_schema", "json_object", "text")
_MAX_WAIT_S = 30.0
#: bytes per requested token an answer may take: a streamed answer spends ~200 bytes of event JSON per token
_BYTES_PER_TOKEN = 256
#: the least an answer may take, whatever max_tokens says (an error page, a long reasoning preamble)
_MIN_ANSWER_BYTES = 4 << 20


def answer_byte_limit(max_tokens: int) -> int:
    """Most bytes read of one answer (body or event stream) before it is cut off."""
    return max(_MIN_ANSWER_BYTES, _BYTES_PER_TOKEN * int(max_tokens))


class InvalidAnswer(ValueError):
    """The model's answer is not a valid story; the message is fed back to the model."""


@dataclass
class Reply:
    """The parts of one chat completion (or of a stream of chunks) that decide what to do with it."""

    content: str | None
    finish_reason: str | None = None
    refusal: str | None = None
    reasoning: str | None = None  # reasoning a server returns beside the content (reasoning_content / reasoning)


def load_template(template: str | None, default: str = DEFAULT_TEMPLATE) -> tuple[str, str]:
    """(text, label) of the instruction template: the shipped one (`default`), or a file the user names."""
    if template in (None, ""):
        text = resources.files("longgen.prompts").joinpath(default).read_text(encoding="utf-8")
        return text, default
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


# ---------------------------------------------------------------------- reading the model's answer
#: reasoning that models print before their answer (DeepSeek-R1, Qwen3, QwQ and others: <think>…</think>)
_REASONING = re.compile(r"<(think|thinking|thought|reasoning|reflection)>.*?</\1>", flags=re.S | re.I)
_REASONING_OPEN = re.compile(r"<(think|thinking|thought|reasoning|reflection)>", flags=re.I)
_REASONING_CLOSE = re.compile(r"</(think|thinking|thought|reasoning|reflection)>", flags=re.I)
#: gpt-oss's harmony format when a server passes it through raw: the answer follows the final-channel marker
_HARMONY_FINAL = "<|channel|>final<|message|>"
#: key names models use for the two fields, compared without case, spaces, '_' or '-'
_ROLES = {"global": "global", "globalprompt": "global", "local": "local", "locals": "local", "localprompt": "local",
          "localprompts": "local"}
#: keys of a prompt written as an object ({"prompt": "..."})
_TEXT_KEYS = ("prompt", "text", "description", "content")
_REFUSAL_START = re.compile(
    r"^\W*(i['’]?m sorry|i am sorry|sorry|i can(?:['’]?t|not| not)|i won['’]?t|i will not|i['’]?m unable|i am unable|"
    r"i['’]?m not able|i am not able|as an ai)\b", flags=re.I)


def quote(text: str | None, limit: int = 120) -> str:
    """A short, single-line, key-free quotation of server text for an error message."""
    flat = " ".join(scrub(text or "").split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _answer_text(content: str) -> str:
    """The answer without the reasoning a model printed before it."""
    text = content.split(_HARMONY_FINAL)[-1]
    text = _REASONING.sub(" ", text)
    close = list(_REASONING_CLOSE.finditer(text))
    if close:  # the opening tag was part of the prompt template, so only the closing one is in the answer
        text = text[close[-1].end():]
    if _REASONING_OPEN.search(text):
        raise InvalidAnswer("the answer is only unfinished reasoning (a <think> block that is never closed) and no JSON object")
    return text.strip()


def _object_spans(text: str) -> list[str]:
    """Every top-level {...} in `text`, in order, skipping braces inside strings ("…" or '…') and comments; an
    object left open at the end of the text is returned as it is (it then fails to parse and says so)."""
    spans, depth, start, quote_char, i = [], 0, 0, None, 0
    while i < len(text):
        ch = text[i]
        if quote_char:
            if ch == "\\":
                i += 1
            elif ch == quote_char:
                quote_char = None
        elif depth and ch in "\"'":
            quote_char = ch
        elif depth and text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif depth and text.startswith("/*", i):
            i = text.find("*/", i + 2) + 1 if "*/" in text[i + 2:] else len(text)
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
        i += 1
    if depth:
        spans.append(text[start:])
    return spans


def _load_object(span: str) -> dict:
    """Strict JSON, else JSON5 (trailing commas, single quotes, comments, unquoted keys: json5 on PyPI)."""
    try:
        return json.loads(span)
    except json.JSONDecodeError as strict:
        try:
            data = json5.loads(span)
        except Exception:
            where = "the answer is not valid JSON: the object is never closed (the answer ends inside it)" if strict.pos >= len(span.rstrip()) else (
                f"the answer is not valid JSON: {strict.msg} at line {strict.lineno} column {strict.colno}")
            raise InvalidAnswer(where) from None
        if not isinstance(data, dict):
            raise InvalidAnswer("the answer must be a JSON object with keys \"global\" and \"local\"") from None
        return data


def _field_text(value: Any, what: str) -> str:
    """A prompt given as a string, or as an object holding it ({"prompt": "…"} / {"text": …})."""
    if isinstance(value, dict):
        texts = [value[k] for k in value if str(k).casefold() in _TEXT_KEYS and isinstance(value[k], str)]
        if len(texts) == 1:
            return texts[0]
        raise InvalidAnswer(f"{what} is an object without exactly one \"prompt\" string; write it as a string")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise InvalidAnswer(f"{what} is a number ({value!r}), not text")
    if not isinstance(value, str):
        raise InvalidAnswer(f"{what} must be a string")
    return value


def _story_fields(data: dict, unwrap: bool = True) -> tuple[Any, Any]:
    """(global, local) of an answer object, accepting near-miss key names ("global_prompt", "Locals", ...) and
    one wrapping object ({"structured_prompt": {...}})."""
    found: dict[str, list[tuple[str, Any]]] = {"global": [], "local": []}
    for key, value in data.items():
        role = _ROLES.get(re.sub(r"[\s_\-]+", "", str(key)).casefold())
        if role:
            found[role].append((str(key), value))
    if unwrap and not found["global"] and not found["local"]:
        inner = [v for v in data.values() if isinstance(v, dict)]
        if len(inner) == 1:
            return _story_fields(inner[0], unwrap=False)
    for role, items in found.items():
        if len({json.dumps(v, sort_keys=True, default=str) for _, v in items}) > 1:
            names = " and ".join(f'"{k}"' for k, _ in items)
            raise InvalidAnswer(f"the object has both {names} with different values; give one \"{role}\"")
    return (found["global"][0][1] if found["global"] else None), (found["local"][0][1] if found["local"] else None)


def _story_from_object(data: dict, num_prompts: int) -> Story:
    glob, local = _story_fields(data)
    if glob is None:
        raise InvalidAnswer('"global" is missing; the object needs keys "global" and "local"')
    glob = _field_text(glob, '"global"')
    if not glob.strip():
        raise InvalidAnswer('"global" must be a non-empty string')
    if not isinstance(local, list):
        raise InvalidAnswer('"local" must be a list of strings')
    if len(local) != num_prompts:
        raise InvalidAnswer(f'"local" must hold exactly {num_prompts} prompts, it holds {len(local)}')
    prompts = []
    for i, item in enumerate(local, 1):
        p = _field_text(item, f"local prompt {i}")
        if not p.strip():
            raise InvalidAnswer(f"local prompt {i} is empty")
        if comparable(glob) not in comparable(p):
            raise InvalidAnswer(f"local prompt {i} does not contain the global prompt word for word; start it with the exact global prompt")
        prompts.append(p.strip())
    return Story(global_prompt=glob.strip(), local_prompts=prompts)


def parse_answer(content: str | None, num_prompts: int) -> Story:
    """The model's answer as a Story, or InvalidAnswer saying exactly what is wrong.

    Accepted where the meaning is unambiguous: reasoning before the answer (<think>…</think>), prose or code
    fences around the object, near-miss key names, JSON5 leniency (trailing commas, single quotes, comments),
    prompts written as {"prompt": "…"}, and several objects in one answer when exactly one of them is a valid
    story (or all valid ones are the same story)."""
    if content is None or not content.strip():
        raise InvalidAnswer("the answer was empty")
    text = _answer_text(content)
    spans = _object_spans(text)
    if not spans:
        raise InvalidAnswer("the answer is not a JSON object (no {...} found)")
    stories: list[Story] = []
    problems: dict[bool, list[InvalidAnswer]] = {True: [], False: []}
    for span in spans:
        try:
            stories.append(_story_from_object(_load_object(span), num_prompts))
        except InvalidAnswer as exc:
            # the problem of an object that tries to be a story matters more than that of an aside like {"note": 1}
            problems[bool(re.search(r"global|local", span, re.I))].append(exc)
    distinct = {json.dumps([s.global_prompt, s.local_prompts]): s for s in stories}
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    if len(distinct) > 1:
        raise InvalidAnswer(f"the answer holds {len(distinct)} different valid stories; give exactly one JSON object")
    raise (problems[True] + problems[False])[0]


#: key names models use for the multi-shot fields, compared without case, spaces, '_' or '-'
_SHOT_ROLES = {"characters": "characters", "character": "characters", "environment": "environment",
               "setting": "environment", "story": "story", "storyoverview": "story", "shots": "shots",
               "shotprompts": "shots"}


def _shot_story_from_object(data: dict, num_shots: int) -> Story:
    """A multi-shot story from an answer object: near-miss key names, characters as {"1": "…"} or as a list of
    {"id", "description"}, shots as strings or {"prompt", "cut"}; then the story rules (longgen/story.py)."""
    found: dict[str, Any] = {}
    for key, value in data.items():
        role = _SHOT_ROLES.get(re.sub(r"[\s_\-]+", "", str(key)).casefold())
        if role:
            found[role] = value
    if "shots" not in found:
        inner = [v for v in data.values() if isinstance(v, dict)]
        if len(inner) == 1 and not found:
            return _shot_story_from_object(inner[0], num_shots)
        raise InvalidAnswer('"shots" is missing; the object needs keys "characters", "environment", "story" and "shots"')
    chars = found.get("characters") or {}
    if isinstance(chars, list):
        table = {}
        for i, item in enumerate(chars, 1):
            if not isinstance(item, dict):
                raise InvalidAnswer('"characters" must map each id to a description, e.g. {"1": "a tall woman ..."}')
            cid = str(item.get("id", i)).strip()
            table[cid.removeprefix("Character ").strip()] = _field_text(
                {k: v for k, v in item.items() if k != "id"}, f"character {cid}")
        chars = table
    if not isinstance(chars, dict):
        raise InvalidAnswer('"characters" must map each id to a description, e.g. {"1": "a tall woman ..."}')
    chars = {str(k).removeprefix("Character ").strip(): v for k, v in chars.items()}
    shots = found["shots"]
    if not isinstance(shots, list):
        raise InvalidAnswer('"shots" must be a list of shot prompts')
    if len(shots) != num_shots:
        raise InvalidAnswer(f'"shots" must hold exactly {num_shots} shot prompts, it holds {len(shots)}')
    shots = [item if isinstance(item, dict) and "cut" in item else _field_text(item, f"shot {i}")
             for i, item in enumerate(shots, 1)]
    story = {"characters": chars, "shots": shots}
    for key in ("environment", "story"):
        if found.get(key) not in (None, ""):
            story[key] = _field_text(found[key], f'"{key}"')
    try:
        return Story.from_dict(story, where="answer")
    except UsageError as exc:
        raise InvalidAnswer(str(exc).removeprefix("answer: ")) from None


def parse_shots_answer(content: str | None, num_shots: int) -> Story:
    """The model's answer as a multi-shot Story (read as leniently as `parse_answer`), or InvalidAnswer."""
    if content is None or not content.strip():
        raise InvalidAnswer("the answer was empty")
    spans = _object_spans(_answer_text(content))
    if not spans:
        raise InvalidAnswer("the answer is not a JSON object (no {...} found)")
    stories, problems = [], []
    for span in spans:
        try:
            stories.append(_shot_story_from_object(_load_object(span), num_shots))
        except InvalidAnswer as exc:
            problems.append(exc)
    distinct = {json.dumps(s.to_dict(), sort_keys=True): s for s in stories}
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    if len(distinct) > 1:
        raise InvalidAnswer(f"the answer holds {len(distinct)} different valid scenes; give exactly one JSON object")
    raise problems[0]


def _shot_schema() -> dict[str, Any]:
    """Structured outputs cannot have free keys, so characters are a list of {id, description} here."""
    character = {"type": "object", "properties": {"id": {"type": "string"}, "description": {"type": "string"}},
                 "required": ["id", "description"], "additionalProperties": False}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "multi_shot_scene",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"characters": {"type": "array", "items": character},
                               "environment": {"type": "string"}, "story": {"type": "string"},
                               "shots": {"type": "array", "items": {"type": "string"}}},
                "required": ["characters", "environment", "story", "shots"],
                "additionalProperties": False,
            },
        },
    }


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
        shot_template: str | None = None,
        cache: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise UsageError("splitter.model must name the chat model, e.g. splitter.model=gpt-4o or a local model name")
        problem = env_name_problem(api_key_env) if isinstance(api_key_env, str) else "is not text"
        if problem:  # never quoted: it may be the key itself
            raise UsageError(f"splitter.api_key_env {problem}; it must be the NAME of an environment variable such as OPENAI_API_KEY (the key itself never goes in the config)")
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
        self.shot_template_text, self.shot_template_label = load_template(shot_template, DEFAULT_SHOT_TEMPLATE)
        self.cache = cache
        self._shots = False  # the split in progress asks for the multi-shot form
        self._format = "json_schema" if response_format == "auto" else response_format
        self._stream = False  # set when the server only answers streaming requests
        self._attempts = 0

    # ------------------------------------------------------------------ api key and client
    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            remember(key)  # from now on scrubbed from every message and log line
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

        http_client = bounded_http_client(self.timeout, answer_byte_limit(self.max_tokens))
        return OpenAI(base_url=self.base_url, api_key=self._api_key(), timeout=self.timeout, max_retries=0,
                      http_client=http_client)

    def server_url(self) -> str:
        """The endpoint requests go to (base_url, else $OPENAI_BASE_URL, else OpenAI's), without credentials."""
        url = self.base_url or os.environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL
        return redact_url(url).rstrip("/")

    # ------------------------------------------------------------------ one request with bounded retries
    def _request(self, client, messages: list[dict[str, str]]) -> Reply:
        """One answer from the server: retries transient failures, adapts to a server that refuses a response
        format or insists on streaming, and turns every other failure into one UsageError line."""
        import openai

        failures = 0
        while True:
            self._attempts += 1
            try:
                return within(self.timeout, self._attempt(client, messages))
            except AnswerTooLarge as exc:
                raise UsageError(
                    f"splitter=llm: {self._where()} sent more than {exc.limit // (1 << 20)} MiB without finishing its "
                    f"answer (cut off there); check the server, or lower splitter.max_tokens (now {self.max_tokens})"
                ) from None
            except _AnswersAsStream:
                log.info("the server answered with a stream of events; asking for a stream (stream=true)")
                self._stream = True
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if not self._adapt_to_refusal(exc):
                    raise UsageError(f"splitter=llm: {self._where()} rejected the request (HTTP {exc.status_code}: {_short(exc)}); check splitter.model and splitter.response_format") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise UsageError(
                    f"splitter=llm: {self._where()} refused the API key from ${self.api_key_env} (HTTP {exc.status_code}: {_short(exc)}); set a valid key"
                ) from None
            except openai.NotFoundError:
                raise UsageError(
                    f"splitter=llm: {self._where()} answered 404: no model {self.model!r} there, or splitter.base_url lacks the /v1 path"
                ) from None
            except (Deadline, openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.APIStatusError) as exc:
                failures += 1
                self._wait_to_retry(exc, failures)
            except openai.APIError as exc:  # e.g. an error event in the middle of a stream, or a body that is not JSON
                raise UsageError(f"splitter=llm: {self._where()} sent an error instead of an answer: {_short(exc)}") from None

    def _attempt(self, client, messages: list[dict[str, str]]) -> Callable[[], Reply]:
        """The call for one attempt with the current response format and streaming choice."""
        kwargs: dict[str, Any] = {}
        if self._format == "json_schema":
            kwargs["response_format"] = _shot_schema() if self._shots else _schema()
        elif self._format == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        stream = self._stream

        def attempt() -> Reply:
            response = client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                **kwargs, **({"stream": True} if stream else {}),
            )
            return _collect_stream(response) if stream else self._reply(response)

        return attempt

    def _adapt_to_refusal(self, exc: Any) -> bool:
        """A 400/422 that a change of request can fix: ask for a stream, or fall back to a simpler response format
        (response_format=auto). False when nothing is left to try."""
        if not self._stream and re.search(r"\bstream", _short(exc), flags=re.I):
            log.info("the server refused a non-streaming request (HTTP %s: %s); asking for a stream", exc.status_code, _short(exc))
            self._stream = True
            return True
        if self.response_format == "auto" and self._format != "text":
            fallback = "json_object" if self._format == "json_schema" else "text"
            log.info("the server refused response_format=%s (HTTP %s); trying %s", self._format, exc.status_code, fallback)
            self._format = fallback
            return True
        return False

    def _wait_to_retry(self, exc: Exception, failures: int) -> None:
        """Sleep before the next attempt after a transient failure; UsageError for a client error (4xx other than
        408/409/429) or when splitter.max_retries are spent."""
        import openai

        status = getattr(exc, "status_code", None)
        if isinstance(exc, openai.APIStatusError) and not isinstance(exc, openai.RateLimitError) and status not in (408, 409) and status < 500:
            raise UsageError(f"splitter=llm: {self._where()} answered HTTP {status}: {_short(exc)}") from None
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

    def _reply(self, response: Any) -> Reply:
        """The first choice of a chat completion; one clear line for anything that is not one."""
        if isinstance(response, str):
            if re.match(r"\s*(data|event|id):", response):
                raise _AnswersAsStream()
            raise UsageError(f"splitter=llm: {self._where()} did not answer like an OpenAI-compatible API: it sent {_describe_body(response)}; check splitter.base_url (it usually ends in /v1)")
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            raise UsageError(f"splitter=llm: {self._where()} did not answer like an OpenAI-compatible API: it sent {_describe_body(response)}; check splitter.base_url (it usually ends in /v1)")
        if not choices:
            raise UsageError(f"splitter=llm: {self._where()} answered with an empty `choices` list (no answer at all); try again, or try another splitter.model")
        choice = choices[0]
        message = getattr(choice, "message", None)
        return Reply(
            content=getattr(message, "content", None),
            finish_reason=getattr(choice, "finish_reason", None),
            refusal=getattr(message, "refusal", None),
            reasoning=_extra(message, "reasoning_content") or _extra(message, "reasoning"),
        )

    def _where(self) -> str:
        """The model and where it was asked: splitter.base_url, else $OPENAI_BASE_URL (named, as the client reads
        it from there), else OpenAI's own endpoint."""
        if self.base_url:
            return f"model {self.model!r} at {redact_url(self.base_url)}"
        if os.environ.get("OPENAI_BASE_URL", "").strip():
            return f"model {self.model!r} at {self.server_url()} (from $OPENAI_BASE_URL)"
        return f"model {self.model!r} at the default OpenAI endpoint"

    def _reason(self, exc: Exception) -> str:
        import openai

        if isinstance(exc, (Deadline, openai.APITimeoutError)):
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
    @property
    def _template(self) -> tuple[str, str]:
        """(text, label) of the instructions for the form being asked for."""
        return (self.shot_template_text, self.shot_template_label) if self._shots else (self.template_text, self.template_label)

    def _messages(self, scenario: str, num_prompts: int) -> list[dict[str, str]]:
        system = string.Template(self._template[0]).safe_substitute(num_prompts=num_prompts)
        user = f"Scenario: {scenario}\nNumber of {'shots' if self._shots else 'local prompts'}: {num_prompts}"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def describe(self) -> dict[str, Any]:
        text, label = self._template
        return {
            "splitter": "llm",
            "model": self.model,
            "base_url": redact_url(self.base_url),
            "temperature": self.temperature,
            "template": label,
            "template_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
            "response_format": self._format,
            **({"form": "multi-shot"} if self._shots else {}),
        }

    def _story(self, reply: Reply, num_prompts: int) -> Story:
        """The story in a reply. UsageError for what asking again cannot fix (a refusal, a cut-off or filtered
        answer), InvalidAnswer (fed back to the model once) for the rest."""
        if reply.refusal:
            raise UsageError(f"splitter=llm: {self._where()} refused to split the scenario: {quote(reply.refusal)}; rephrase the scenario or try another splitter.model")
        try:
            return (parse_shots_answer if self._shots else parse_answer)(reply.content, num_prompts)
        except InvalidAnswer:
            content = reply.content or ""
            if reply.finish_reason == "length":
                only_reasoning = (reply.reasoning and not content.strip()) or (
                    _REASONING_OPEN.search(content) and not _REASONING_CLOSE.search(content))
                spent = " (all of it reasoning)" if only_reasoning else ""
                raise UsageError(
                    f"splitter=llm: the answer of {self._where()} was cut off (finish_reason=length) after "
                    f"{len(content)} characters{spent}; raise splitter.max_tokens (now {self.max_tokens})"
                ) from None
            if reply.finish_reason == "content_filter":
                raise UsageError(f"splitter=llm: the server's content filter stopped the answer of {self._where()} (finish_reason=content_filter); rephrase the scenario or try another splitter.model") from None
            plain = _REASONING.sub(" ", content).strip()
            if "{" not in plain and _REFUSAL_START.match(plain):
                raise UsageError(f"splitter=llm: {self._where()} refused to split the scenario: {quote(plain)}; rephrase the scenario or try another splitter.model") from None
            raise

    def split(self, scenario: str, num_prompts: int) -> Story:
        self._shots = False
        return self._split(scenario, num_prompts)

    def split_shots(self, scenario: str, num_prompts: int) -> Story:
        """The multi-shot form (LCT §3.2.1) with exactly `num_prompts` shots, from the multi-shot template."""
        self._shots = True
        try:
            return self._split(scenario, num_prompts)
        finally:
            self._shots = False

    def _split(self, scenario: str, num_prompts: int) -> Story:
        scenario = check_scenario(scenario)
        num_prompts = check_num_prompts(num_prompts)
        key = cache_key(scenario, num_prompts, self.model, self._template[0], self.temperature, self.server_url())
        store = StoryCache() if self.cache else None
        if store is not None:
            hit = store.load(key)
            if hit is not None and hit.num_events == num_prompts and hit.multi_shot == self._shots:
                log.info("splitter=llm: reusing the cached story %s (splitter.cache=false asks the model again)", store.path(key))
                hit.source = {**hit.source, "cache": "hit"}
                return hit

        client = self._client()
        self._attempts = 0
        messages = self._messages(scenario, num_prompts)
        reply = self._request(client, messages)
        try:
            story = self._story(reply, num_prompts)
        except InvalidAnswer as first:
            log.warning("the LLM's answer is not a valid story (%s); asking once more", first)
            messages += [
                {"role": "assistant", "content": reply.content or ""},
                {
                    "role": "user",
                    "content": f"That answer cannot be used: {first}. Reply again with only the JSON object " + (
                        f'{{"characters": {{...}}, "environment": ..., "story": ..., "shots": [...]}} holding exactly '
                        f'{num_prompts} shot prompts that name characters as "Character ID".' if self._shots else
                        f'{{"global": ..., "local": [...]}} holding exactly {num_prompts} local prompts, each starting '
                        f'with the global prompt.'),
                },
            ]
            reply = self._request(client, messages)
            try:
                story = self._story(reply, num_prompts)
            except InvalidAnswer as second:
                finish = f", finish_reason={reply.finish_reason}" if reply.finish_reason not in (None, "stop") else ""
                raise UsageError(
                    f"splitter=llm: {self._where()} gave no valid story after one retry: {second} (answer began "
                    f"{quote(reply.content)}{finish}); try another splitter.model, a lower splitter.temperature, or splitter=offline"
                ) from None
        story.scenario = scenario
        story.source = {**self.describe(), "requests": self._attempts, "cache": "miss" if store is not None else "off", "cache_key": key[:16]}
        if store is not None:
            store.save(key, story)
        return story


class _AnswersAsStream(Exception):
    """The server sent server-sent events to a request that did not ask for a stream."""


class Deadline(Exception):
    """A request ran past its wall-clock deadline (counted as a timeout)."""


class AnswerTooLarge(Exception):
    """A response body grew past the byte limit; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is longer than {limit} bytes")
        self.limit = limit


def within(seconds: float, call: Callable[[], Reply]) -> Reply:
    """call() on a helper thread, waited for at most `seconds` of wall-clock time (Deadline past it). The client's
    own timeout only bounds the wait between two reads, so a server that trickles its answer would hold the call
    for ever; here the caller is free at the deadline, and the helper stops at its next chunk (bounded_http_client
    gives every body the same deadline) or at the client's read timeout."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["reply"] = call()
        except BaseException as exc:  # handed to the caller, who decides
            outcome["error"] = exc

    helper = threading.Thread(target=run, name="longgen-llm-request", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise Deadline(f"no complete answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


def bounded_http_client(seconds: float, limit: int):
    """The openai client's own default HTTP client (proxies and the rest as it sets them) with a response hook that
    wraps every body: reading stops with AnswerTooLarge past `limit` bytes, and with Deadline at the first chunk
    that arrives more than `seconds` after the headers. The HTTP library is the one the installed openai client is
    built on (httpx, in newer releases named httpx2), found through the client class it exports."""
    import importlib

    import openai

    default = getattr(openai, "DefaultHttpx2Client", None) or getattr(openai, "DefaultHttpxClient")
    client = default()
    base = next(c for c in type(client).__mro__ if c.__name__ == "Client" and not c.__module__.startswith("openai"))
    http = importlib.import_module(base.__module__.split(".")[0])

    class BoundedBody(http.SyncByteStream):
        def __init__(self, inner: Any, deadline: float) -> None:
            self.inner, self.deadline = inner, deadline

        def __iter__(self):
            size = 0
            for chunk in self.inner:
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge(limit)
                if time.monotonic() > self.deadline:
                    raise Deadline(f"the answer was still arriving after {seconds:g} s")
                yield chunk

        def close(self) -> None:
            self.inner.close()

    def bound(response: Any) -> None:
        response.stream = BoundedBody(response.stream, time.monotonic() + seconds)

    client.event_hooks = {"response": [bound]}
    return client


def _extra(obj: Any, name: str) -> Any:
    """A field the openai types do not declare (servers add reasoning_content / reasoning)."""
    value = getattr(obj, name, None)
    if value is None:
        value = (getattr(obj, "model_extra", None) or {}).get(name)
    return value if isinstance(value, str) and value.strip() else None


def _collect_stream(stream: Any) -> Reply:
    """Join the chunks of a streamed chat completion (first choice) into one Reply."""
    content, refusal, reasoning, finish, chunks = [], [], [], None, 0
    for chunk in stream:
        if isinstance(chunk, str) or not isinstance(getattr(chunk, "choices", None), list):
            raise UsageError(f"splitter=llm: the server's stream held {_describe_body(chunk)} instead of chat completion chunks; check splitter.base_url")
        chunks += 1
        for choice in chunk.choices:
            if getattr(choice, "index", 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            content.append(getattr(delta, "content", None) or "")
            refusal.append(getattr(delta, "refusal", None) or "")
            reasoning.append(_extra(delta, "reasoning_content") or _extra(delta, "reasoning") or "")
            finish = getattr(choice, "finish_reason", None) or finish
    if not chunks:
        raise UsageError("splitter=llm: the server's stream ended without a single chunk (no answer at all); try again, or try another splitter.model")
    return Reply("".join(content), finish, "".join(refusal) or None, "".join(reasoning) or None)


def _describe_body(body: Any) -> str:
    """One phrase for a body that is not a chat completion: an HTML page (with its title), other text, or JSON."""
    if isinstance(body, str):
        title = re.search(r"<title[^>]*>(.*?)</title>", body, flags=re.S | re.I)
        if re.search(r"<!doctype html|<html|<body|<head", body, flags=re.I):
            return "an HTML page" + (f" titled {quote(title.group(1), 80)}" if title else f" beginning {quote(body, 80)}")
        return f"text beginning {quote(body, 80)}" if body.strip() else "an empty body"
    if isinstance(body, list):
        return f"a JSON list of {len(body)} item(s)"
    fields = sorted(k for k, v in (getattr(body, "model_extra", None) or {}).items() if v is not None)
    fields += sorted(k for k in ("id", "object", "model") if getattr(body, k, None) is not None)
    return f"JSON without `choices` (fields: {', '.join(fields) or 'none'})"


def _short(exc: Exception) -> str:
    """The first line of an error from the client or the server, key-free and at most 160 characters."""
    text = scrub(str(getattr(exc, "message", None) or exc)).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
