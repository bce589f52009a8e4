"""Keep API keys out of everything longgen prints, logs or writes.

Three parts:
- `check_command_line(args)`: the CLI runs it on argv before Hydra starts, because Hydra saves every override in
  `.hydra/` (and in the log) as soon as a run begins. It refuses an option named like a credential
  (`+splitter.api_key=…`, `hydra.job.env_set.OPENAI_API_KEY=…`), a `base_url` that carries credentials
  (`user:password@`, `?api_key=…`), an `api_key_env` that is a key rather than a variable name, and any value that
  looks like a key. Its error lines never contain the value.
- `scrub(text)`: replaces key-like tokens (the usual provider prefixes such as `sk-…`, `Bearer …`, credentials in
  URLs) and every key longgen has read from the environment (`remember`) with `[redacted]`. The LLM splitter
  scrubs every server text it quotes; `RedactFilter` scrubs every log record (conf/hydra/job_logging/rich.yaml).
- `looks_like_key(value)`: the test behind both.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import parse_qsl, urlsplit

REDACTED = "[redacted]"

#: tokens in the formats providers issue keys in (OpenAI/Anthropic/DeepSeek sk-, Groq gsk_, xAI, Perplexity,
#: NVIDIA, Hugging Face hf_, GitHub, Google AIza, Replicate r8_) and an Authorization header's bearer token. After
#: the prefix a key is random: it has a digit and either an upper-case letter or 32+ characters, which keeps
#: names like "sk-learn-experiments" out.
_KEY_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:sk|gsk|xai|pplx|nvapi|ghp|gho|ghu|ghs|github_pat|r8)[-_](?=[A-Za-z0-9_\-]*[0-9])"
    r"(?:(?=[A-Za-z0-9_\-]*[A-Z])[A-Za-z0-9_\-]{20,}|[A-Za-z0-9_\-]{32,})"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r")"
    r"|(?i:\bbearer\s+)(?=[A-Za-z0-9._~+/\-]*[0-9])[A-Za-z0-9._~+/\-]{16,}=*"
)
#: credentials inside URLs: user:password@host and ?key=… query parameters
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")
_SECRET_PARAM = r"(?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|passwd|sig|signature|auth)"
_URL_PARAM = re.compile(rf"(?i)([?&]{_SECRET_PARAM}=)[^&\s#\"']+")
#: option names that hold a credential (the last part of a dotted key)
_SECRET_OPTION = re.compile(rf"(?i)(?:^|[._]){_SECRET_PARAM}$|(?i:authorization|bearer|credentials?)$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIN_REMEMBERED = 8

_known: set[str] = set()


def remember(key: str | None) -> None:
    """Redact this exact key (read from the environment) from everything scrubbed from now on."""
    if key and len(key.strip()) >= _MIN_REMEMBERED:
        _known.add(key.strip())


def looks_like_key(value: str) -> bool:
    """A provider-style key token, or a key longgen has read from the environment."""
    text = str(value)
    return bool(_KEY_TOKEN.search(text)) or any(k in text for k in _known)


def scrub(text: str) -> str:
    """`text` with keys, bearer tokens and URL credentials replaced by [redacted]."""
    text = str(text)
    for key in sorted(_known, key=len, reverse=True):
        text = text.replace(key, REDACTED)
    text = _KEY_TOKEN.sub(REDACTED, text)
    text = _URL_USERINFO.sub(REDACTED + "@", text)
    return _URL_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


def url_credentials(url: str) -> str | None:
    """What in `url` is a credential ("a user:password", "the query parameter 'key'"), or None."""
    try:
        parts = urlsplit(str(url))
        password = parts.password
    except ValueError:
        return None
    if password or parts.username:  # a lone user name may be a token too (https://TOKEN@host)
        return "a user:password before the host" if password else "a user name before the host"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if re.fullmatch(_SECRET_PARAM, name, flags=re.I) or looks_like_key(value):
            return f"the query parameter {name!r}"
    return None


def env_name_problem(value: str) -> str | None:
    """Why `value` cannot be the name of the environment variable holding the key (never quoting it), or None."""
    text = str(value)
    if looks_like_key(text):
        return "looks like a key itself"
    if not _ENV_NAME.fullmatch(text):
        return "is not a variable name (letters, digits and _, not starting with a digit)"
    has = lambda pattern: re.search(pattern, text) is not None  # noqa: E731
    if len(text) >= 24 and has(r"[a-z]") and has(r"[A-Z]") and has(r"[0-9]"):
        return "looks like a key itself (a long mix of lower- and upper-case letters and digits)"
    return None


def check_command_line(args: list[str], environ: dict[str, str] | None = None) -> str | None:
    """An error line (without the value) for a credential among the command-line overrides, else None."""
    env = os.environ if environ is None else environ
    key_env = "OPENAI_API_KEY"
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+~").rsplit(".", 1)[-1] == "api_key_env" and env_name_problem(value) is None:
            key_env = value
    remember(env.get(key_env))
    remember(env.get("OPENAI_API_KEY"))
    refused = (f"so nothing was run or saved; put the key in the environment instead (export {key_env}=…, or name "
               f"another variable with splitter.api_key_env=NAME): Hydra saves every command-line value in .hydra/ and the log")
    for arg in args:
        name, sep, value = arg.partition("=")
        option = name.lstrip("+~")
        if not sep:
            if looks_like_key(arg):
                return f"an argument looks like an API key, {refused}"
            continue
        last = option.rsplit(".", 1)[-1]
        if last == "api_key_env":
            problem = env_name_problem(value)
            if problem:
                return (f"{option}= must be the NAME of an environment variable such as OPENAI_API_KEY; the value given "
                        f"{problem}, {refused}")
            continue
        if _SECRET_OPTION.search(last) and value.strip() not in ("", "null"):
            return f"{option}=… would put a key on the command line, {refused}"
        if last == "base_url":
            where = url_credentials(value.strip("'\""))
            if where:
                return f"{option}= carries a credential ({where}), {refused}; give the URL without it"
        if looks_like_key(value):
            return f"the value of {option}= looks like an API key, {refused}"
    return None


class RedactFilter(logging.Filter):
    """Scrub every log record (message and arguments) before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
