"""The LLM splitter against a loopback OpenAI-compatible server (real HTTP, the real openai client): good answers,
one corrective retry with the validation error fed back, wrong counts, always-bad answers, timeouts, 429 with
retry, response_format fallback, the cache, and the API key kept out of every written file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_server import ScriptedLLM, story_json
from longgen.errors import UsageError
from longgen.splitters.auto import AutoSplitter
from longgen.splitters.llm import LLMSplitter, parse_answer, InvalidAnswer

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-7f3a9c1e-DO-NOT-LEAK"
SCENARIO = "A brown bear wades into a mountain river, then it catches a salmon, and finally it climbs onto a mossy rock."
GOOD3 = story_json("A brown bear in a clear mountain river, golden hour.", ["The bear wades in.", "The bear catches a salmon.", "The bear climbs onto a rock."])


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _splitter(server, **kw):
    options = dict(model="test-model", base_url=server.url, timeout=5.0, max_retries=2, backoff=0.0, cache=False)
    options.update(kw)
    return LLMSplitter(**options)


def test_good_answer_is_parsed_and_the_key_goes_only_to_the_server():
    with ScriptedLLM([("answer", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert len(server.requests) == 1
    assert story.local_prompts[1] == "A brown bear in a clear mountain river, golden hour. The bear catches a salmon."
    assert story.global_prompt == "A brown bear in a clear mountain river, golden hour."
    request = server.requests[0]
    assert request["model"] == "test-model"
    assert request["response_format"]["type"] == "json_schema"
    assert "Scenario: " + SCENARIO in request["messages"][1]["content"]
    assert "3" in request["messages"][0]["content"] and "$num_prompts" not in request["messages"][0]["content"]
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert story.source["splitter"] == "llm" and story.source["model"] == "test-model"
    assert SECRET not in story.to_json()


def test_malformed_json_then_good_retries_once_with_the_error():
    with ScriptedLLM([("answer", '{"global": "A bear", "local": ["A bear swims",'), ("answer", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert len(server.requests) == 2 and len(story.local_prompts) == 3
    second = server.requests[1]["messages"]
    assert second[2] == {"role": "assistant", "content": '{"global": "A bear", "local": ["A bear swims",'}
    assert "not valid JSON" in second[3]["content"]
    assert story.source["requests"] == 2


def test_wrong_number_of_prompts_is_fed_back():
    wrong = story_json("A bear.", ["It swims.", "It eats."])
    with ScriptedLLM([("answer", wrong), ("answer", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert len(story.local_prompts) == 3
    assert 'exactly 3 prompts, it holds 2' in server.requests[1]["messages"][-1]["content"]


def test_always_bad_fails_with_the_problem_quoted():
    wrong = story_json("A bear.", ["It swims.", "It eats."])
    with ScriptedLLM([("answer", wrong)]) as server:
        with pytest.raises(UsageError) as err:
            _splitter(server).split(SCENARIO, 3)
    assert len(server.requests) == 2  # the answer and exactly one corrective retry
    message = str(err.value)
    assert "no valid story after one retry" in message and "exactly 3 prompts, it holds 2" in message
    assert "\n" not in message


def test_slow_server_times_out_after_bounded_retries():
    with ScriptedLLM([("sleep", 2.0, GOOD3)]) as server:
        t0 = time.perf_counter()
        with pytest.raises(UsageError) as err:
            _splitter(server, timeout=0.2, max_retries=1).split(SCENARIO, 3)
        elapsed = time.perf_counter() - t0
    assert "timed out after 0.2 s" in str(err.value) and "2 attempt(s)" in str(err.value)
    assert len(server.requests) == 2
    assert elapsed < 1.8  # neither the client's own retries nor the server's 2 s answer were waited for


def test_rate_limit_then_success():
    with ScriptedLLM([("status", 429, {"retry-after": "0"}, "slow down"), ("answer", GOOD3)]) as server:
        story = _splitter(server, backoff=5.0).split(SCENARIO, 3)  # Retry-After 0 wins over the 5 s backoff
    assert len(server.requests) == 2 and len(story.local_prompts) == 3


def test_rate_limit_forever_gives_a_clear_error():
    with ScriptedLLM([("status", 429, {"retry-after": "0"}, "slow down")]) as server:
        with pytest.raises(UsageError, match=r"rate limited \(HTTP 429\)"):
            _splitter(server, max_retries=2).split(SCENARIO, 3)
    assert len(server.requests) == 3


def test_unsupported_structured_outputs_fall_back_to_json_object():
    with ScriptedLLM([("reject_schema", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert [r.get("response_format", {}).get("type") for r in server.requests] == ["json_schema", "json_object"]
    assert story.source["response_format"] == "json_object"


def test_cache_reuses_the_story_and_keys_on_temperature(tmp_path):
    with ScriptedLLM([("answer", GOOD3)]) as server:
        first = _splitter(server, cache=True).split(SCENARIO, 3)
        again = _splitter(server, cache=True).split(SCENARIO, 3)
        assert len(server.requests) == 1
        assert again.local_prompts == first.local_prompts and again.source["cache"] == "hit"
        _splitter(server, cache=True, temperature=0.7).split(SCENARIO, 3)
        assert len(server.requests) == 2
        _splitter(server, cache=False).split(SCENARIO, 3)
        assert len(server.requests) == 3
    files = list((tmp_path / "xdg-cache" / "longgen" / "stories").glob("*.json"))
    assert len(files) == 2
    assert all(SECRET not in f.read_text() for f in files)


def test_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_LLM_KEY", "other-secret")
    with ScriptedLLM([("answer", GOOD3)]) as server:
        _splitter(server, api_key_env="MY_LLM_KEY").split(SCENARIO, 3)
    assert server.headers[0]["authorization"] == "Bearer other-secret"


def test_missing_key_without_a_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UsageError, match="export OPENAI_API_KEY"):
        LLMSplitter(cache=False).split(SCENARIO, 3)


def test_custom_template_is_the_system_message(tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("Split into exactly $num_prompts parts. Answer JSON.")
    with ScriptedLLM([("answer", GOOD3)]) as server:
        story = _splitter(server, template=str(template)).split(SCENARIO, 3)
    assert server.requests[0]["messages"][0]["content"] == "Split into exactly 3 parts. Answer JSON."
    assert story.source["template"] == str(template)


def test_bad_options_fail_in_the_constructor():
    with pytest.raises(UsageError, match="temperature"):
        LLMSplitter(temperature=5)
    with pytest.raises(UsageError, match="NAME of an environment variable"):
        LLMSplitter(api_key_env="sk-abc def")
    with pytest.raises(UsageError, match="response_format"):
        LLMSplitter(response_format="xml")
    with pytest.raises(UsageError, match="splitter.template"):
        LLMSplitter(template="/nonexistent/template.txt")


@pytest.mark.parametrize("answer,problem", [
    ("Sure! Here you go.", "not a JSON object"),
    ('["a", "b"]', "not a JSON object"),
    ('{"global": "", "local": ["x"]}', '"global" must be a non-empty string'),
    ('{"global": "A cat.", "local": ["A dog runs."]}', "does not contain the global prompt"),
    ('{"global": "A cat.", "local": ["A cat. It runs.", ""]}', "exactly 1 prompts, it holds 2"),
])
def test_parse_answer_names_the_problem(answer, problem):
    with pytest.raises(InvalidAnswer, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_answer(answer, 1)


def test_parse_answer_accepts_code_fences_and_spacing():
    story = parse_answer('```json\n{"global": "A  cat on a mat.", "local": ["a cat on a mat  It sleeps."]}\n```', 1)
    assert story.local_prompts == ["a cat on a mat  It sleeps."]


# ---------------------------------------------------------------------- answers as real models write them
CAT = "A grey cat on a sunny windowsill."
CAT1 = {"global": CAT, "local": [f"{CAT} The cat yawns.", f"{CAT} The cat falls asleep."]}
CAT1_JSON = json.dumps(CAT1)


@pytest.mark.parametrize("answer", [
    pytest.param(f"<think>The user wants {{\"global\": ..., \"local\": [...]}}. Two events.</think>\n{CAT1_JSON}", id="reasoning-block"),
    pytest.param(f"Okay, so the format is {{global, local}}; let me write it.</think>\n\n{CAT1_JSON}", id="reasoning-close-only"),
    pytest.param(json.dumps({"Global_Prompt": CAT, "local prompts": CAT1["local"]}), id="near-miss-keys"),
    pytest.param(json.dumps({"global": CAT, "locals": CAT1["local"]}), id="near-miss-locals"),
    pytest.param("{'global': '%s', // shared look\n 'local': ['%s', '%s',],}" % (CAT, *CAT1["local"]), id="json5-quotes-comments-commas"),
    pytest.param(json.dumps({"global": {"prompt": CAT}, "local": [{"prompt": CAT1["local"][0]}, {"text": CAT1["local"][1]}]}), id="prompts-as-objects"),
    pytest.param('The format is {"global": "...", "local": ["..."]}. Here is mine:\n' + CAT1_JSON + "\nHope it helps {:}", id="several-objects-one-valid"),
    pytest.param(json.dumps({"structured_prompt": CAT1}), id="wrapped-object"),
])
def test_parse_answer_reads_what_real_models_write(answer):
    story = parse_answer(answer, 2)
    assert story.global_prompt == CAT and story.local_prompts == CAT1["local"]


@pytest.mark.parametrize("answer,problem", [
    pytest.param(CAT1_JSON + "\n" + json.dumps({"global": CAT, "local": [f"{CAT} The cat runs.", f"{CAT} The cat sits."]}), "2 different valid stories", id="two-valid-stories"),
    pytest.param(json.dumps({"global": CAT, "global_prompt": "A dog.", "local": CAT1["local"]}), 'both "global" and "global_prompt"', id="conflicting-keys"),
    pytest.param(json.dumps({"global": CAT, "local": [CAT1["local"][0], 3]}), "local prompt 2 is a number (3)", id="number-prompt"),
    pytest.param("<think>First I need to find the events. The cat", "unfinished reasoning", id="unclosed-reasoning"),
])
def test_parse_answer_refuses_what_is_ambiguous(answer, problem):
    with pytest.raises(InvalidAnswer, match=re.escape(problem)):
        parse_answer(answer, 2)


def test_server_that_only_streams_is_asked_again_with_a_stream():
    with ScriptedLLM([("stream_only", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert len(story.local_prompts) == 3
    assert [bool(r.get("stream")) for r in server.requests] == [False, True]


def test_server_that_answers_with_events_is_read_as_a_stream():
    with ScriptedLLM([("sse", GOOD3)]) as server:
        story = _splitter(server).split(SCENARIO, 3)
    assert story.local_prompts[2].endswith("The bear climbs onto a rock.")
    assert [bool(r.get("stream")) for r in server.requests] == [False, True]


@pytest.mark.parametrize("step,expected", [
    pytest.param(("completion", {"message": {"role": "assistant", "content": None, "refusal": "I can't help with that request."}, "finish_reason": "stop"}),
                 "refused to split the scenario: \"I can't help with that request.\"", id="refusal-field"),
    pytest.param(("answer", "I'm sorry, but I can't assist with this scenario."),
                 "refused to split the scenario: \"I'm sorry, but I can't assist with this scenario.\"", id="refusal-content"),
    pytest.param(("completion", {"message": {"role": "assistant", "content": '{"global": "A bear.", "local": ["A bear. It wa'}, "finish_reason": "length"}),
                 "was cut off (finish_reason=length) after 46 characters; raise splitter.max_tokens (now 2048)", id="cut-off"),
    pytest.param(("completion", None), "empty `choices` list", id="empty-choices"),
    pytest.param(("raw", 200, "text/html", "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>hi</body></html>"),
                 "did not answer like an OpenAI-compatible API: it sent an HTML page titled 'Welcome to nginx!'", id="html-page"),
    pytest.param(("raw", 200, "application/json", '{"detail": "Not Found"}'),
                 "it sent JSON without `choices` (fields: detail)", id="json-not-a-completion"),
])
def test_answers_that_are_not_stories_fail_with_one_line_and_no_retry(step, expected):
    with ScriptedLLM([step]) as server:
        with pytest.raises(UsageError) as err:
            _splitter(server).split(SCENARIO, 3)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert len(server.requests) == 1


def test_a_server_error_that_echoes_the_key_is_redacted(monkeypatch):
    plain = "plainsecret-0123456789"  # no provider prefix: redacted because it is the key that was read
    monkeypatch.setenv("OPENAI_API_KEY", plain)
    for key in (plain, SECRET):
        monkeypatch.setenv("OPENAI_API_KEY", key)
        with ScriptedLLM([("status", 402, {}, f"no quota left for key {key} (or sk-proj-Aa11Bb22Cc33Dd44Ee55)")]) as server:
            with pytest.raises(UsageError) as err:
                _splitter(server).split(SCENARIO, 3)
        message = str(err.value)
        assert "HTTP 402" in message and "no quota left for key [redacted]" in message
        assert key not in message and "Aa11Bb22" not in message


def test_cache_is_keyed_on_the_server(tmp_path):
    other = story_json("A black bear in a dark forest river.", ["The bear wades in.", "The bear fishes.", "The bear leaves."])
    with ScriptedLLM([("answer", GOOD3)]) as first, ScriptedLLM([("answer", other)]) as second:
        a = _splitter(first, cache=True).split(SCENARIO, 3)
        b = _splitter(second, cache=True).split(SCENARIO, 3)
        again = _splitter(second, cache=True).split(SCENARIO, 3)
    assert len(first.requests) == 1 and len(second.requests) == 1  # the second server was asked itself, once
    assert a.global_prompt != b.global_prompt and again.global_prompt == b.global_prompt


def test_api_key_env_holding_a_key_is_refused_without_echoing_it():
    with pytest.raises(UsageError) as err:
        LLMSplitter(api_key_env="sk_live_0123456789abcdefABCDEF")
    assert "NAME of an environment variable" in str(err.value) and "0123456789" not in str(err.value)


def test_log_records_are_scrubbed_of_keys(caplog):
    import logging

    from longgen.redact import RedactFilter, remember

    remember("plain-local-server-key-42")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s to %s", ("Bearer sk-abcdefghijklmnop0123", "http://u:pw@h/v1?api_key=plain-local-server-key-42"), None)
    RedactFilter().filter(record)
    text = record.getMessage()
    assert "sk-abcdef" not in text and "pw@" not in text and "plain-local-server-key-42" not in text
    assert text.startswith("sent ") and "[redacted]" in text


def test_auto_uses_the_llm_when_a_key_is_set_and_offline_otherwise(monkeypatch):
    with ScriptedLLM([("answer", GOOD3)]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        story = AutoSplitter(model="m", backoff=0.0, cache=False).split(SCENARIO, 3)
        assert len(server.requests) == 1 and story.source["splitter"] == "llm" and story.source["selected_by"] == "auto"
        monkeypatch.delenv("OPENAI_API_KEY")
        story = AutoSplitter(model="m", cache=False).split(SCENARIO, 3)
        assert len(server.requests) == 1 and story.source["splitter"] == "offline"


# ---------------------------------------------------------------------- through the CLI
def _cli(args, tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    full.update({"XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run([sys.executable, "-m", "longgen.cli", *args], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=120)


def test_cli_llm_run_writes_story_and_never_the_key(tmp_path):
    scenario = tmp_path / "bear.txt"
    scenario.write_text(SCENARIO)
    run_dir, out = tmp_path / "run", tmp_path / "copy" / "story.json"
    with ScriptedLLM([("answer", GOOD3)]) as server:
        proc = _cli(["split-prompt", str(scenario), "num_prompts=3", "splitter=llm", f"splitter.base_url={server.url}",
                     "splitter.model=test-model", f"hydra.run.dir={run_dir}", f"out={out}"], tmp_path, OPENAI_API_KEY=SECRET)
    assert proc.returncode == 0, proc.stderr
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    story = json.loads((run_dir / "story.json").read_text())
    assert len(story["local"]) == 3 and story["source"]["model"] == "test-model"
    assert json.loads(out.read_text()) == story
    assert "The bear catches a salmon." in proc.stdout  # the Rich table
    written = [p for p in list(run_dir.rglob("*")) + list((tmp_path / "xdg-cache").rglob("*")) if p.is_file()]
    assert len(written) >= 5  # story, log, .hydra/{config,hydra,overrides}.yaml, cache entry
    for path in written:
        assert SECRET not in path.read_text(errors="replace"), path


def test_cli_always_bad_exits_nonzero_and_writes_no_story(tmp_path):
    scenario = tmp_path / "bear.txt"
    scenario.write_text(SCENARIO)
    run_dir = tmp_path / "run"
    with ScriptedLLM([("answer", "not json at all")]) as server:
        proc = _cli(["split-prompt", str(scenario), "num_prompts=3", "splitter=llm", f"splitter.base_url={server.url}",
                     "splitter.backoff=0", f"hydra.run.dir={run_dir}"], tmp_path, OPENAI_API_KEY=SECRET)
    assert proc.returncode == 2
    assert len(server.requests) == 2
    error_lines = [l for l in proc.stderr.splitlines() if l.startswith("longgen: error:")]
    assert len(error_lines) == 1 and "no valid story after one retry" in error_lines[0] and "not a JSON object" in error_lines[0]
    assert not (run_dir / "story.json").exists()
    assert not list(tmp_path.rglob("story.json"))
