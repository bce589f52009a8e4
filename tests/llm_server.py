"""A loopback OpenAI-compatible chat server for tests: real HTTP on 127.0.0.1, scripted answers, recorded requests.

Each request to POST /v1/chat/completions takes the next step of `script` (the last step repeats):
  ("answer", text)                       200 with a chat completion whose message content is `text`
  ("status", code, headers, error_text)  that HTTP status with an OpenAI-style error body
  ("sleep", seconds, text)               wait, then answer `text`
  ("reject_schema", text)                400 if the request asks for response_format json_schema, else answer
  ("completion", choice)                 200 with a chat completion whose only choice is `choice` (a dict: message,
                                         finish_reason, ...); `None` sends an empty `choices` list
  ("raw", code, content_type, body)      that status, content type and body text exactly (HTML pages, junk)
  ("stream_only", text)                  400 "stream must be true" unless the request streams, then `text` as SSE
  ("sse", text)                          `text` as server-sent events whatever the request asked for
  ("trickle", text, gap_s, most_s)       the headers at once, then the completion holding `text` one byte every
                                         `gap_s` seconds, for at most `most_s` seconds (then the connection closes)
  ("huge", nbytes)                       a completion whose content is `nbytes` of "x", sent in 64 KiB pieces
  ("endless", most_bytes)                server-sent events of "x" without end (stops at `most_bytes` or when the
                                         client hangs up)
`sent` counts the body bytes the huge and endless steps managed to send (bounded loops, loopback only).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(body: dict, choices: list) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
        "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def sse_events(body: dict, text: str, pieces: int = 3) -> list[dict]:
    """`text` split into `pieces` chat.completion.chunk events (role first, finish_reason last)."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": body.get("model", "m")}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in parts]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return events


class ScriptedLLM:
    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.sent = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner._lock:
                    owner.requests.append(body)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = owner.script[min(len(owner.requests), len(owner.script)) - 1]
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "no such route", "type": "not_found"}})
                kind = step[0]
                if kind == "status":
                    _, code, headers, text = step
                    return self._send(code, {"error": {"message": text, "type": "error"}}, headers)
                if kind == "sleep":
                    time.sleep(step[1])
                    return self._answer(step[2], body)
                if kind == "reject_schema":
                    if (body.get("response_format") or {}).get("type") == "json_schema":
                        return self._send(400, {"error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}})
                    return self._answer(step[1], body)
                if kind == "completion":
                    return self._send(200, completion(body, [] if step[1] is None else [{"index": 0, **step[1]}]))
                if kind == "raw":
                    _, code, content_type, text = step
                    return self._send_bytes(code, content_type, text.encode())
                if kind == "stream_only":
                    if not body.get("stream"):
                        return self._send(400, {"error": {"message": "stream must be true: this server only streams", "type": "invalid_request_error"}})
                    return self._sse(step[1], body)
                if kind == "sse":
                    return self._sse(step[1], body)
                if kind == "trickle":
                    return self._trickle(step[1], step[2], step[3], body)
                if kind == "huge":
                    head = json.dumps(completion(body, [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "@"}}]))
                    before, after = head.split("@")
                    pieces = [before.encode(), *[b"x" * (1 << 16)] * (step[1] >> 16), after.encode()]
                    return self._pieces(200, "application/json", pieces, sum(map(len, pieces)))
                if kind == "endless":
                    event = sse_events(body, "x" * 4096, pieces=1)[1]
                    piece = f"data: {json.dumps(event)}\n\n".encode()
                    return self._pieces(200, "text/event-stream", [piece] * (step[1] // len(piece)), None)
                return self._answer(step[1], body)

            def _answer(self, text, body):
                self._send(200, completion(body, [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]))

            def _sse(self, text, body):
                data = "".join(f"data: {json.dumps(e)}\n\n" for e in sse_events(body, text)) + "data: [DONE]\n\n"
                self._send_bytes(200, "text/event-stream", data.encode())

            def _trickle(self, text, gap, most, body):
                data = json.dumps(completion(body, [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}])).encode()
                end = time.monotonic() + most
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        if time.monotonic() > end:
                            break
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(gap)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _pieces(self, code, content_type, pieces, length):
                try:
                    self.send_response(code)
                    self.send_header("content-type", content_type)
                    if length is not None:
                        self.send_header("content-length", str(length))
                    self.end_headers()
                    for piece in pieces:
                        self.wfile.write(piece)
                        with owner._lock:
                            owner.sent += len(piece)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, code, payload, headers=None):
                self._send_bytes(code, "application/json", json.dumps(payload).encode(), headers)

            def _send_bytes(self, code, content_type, data, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def story_json(global_prompt: str, events: list[str]) -> str:
    return json.dumps({"global": global_prompt, "local": [f"{global_prompt} {e}" for e in events]})
