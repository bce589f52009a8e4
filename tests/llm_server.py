"""A loopback OpenAI-compatible chat server for tests: real HTTP on 127.0.0.1, scripted answers, recorded requests.

Each request to POST /v1/chat/completions takes the next step of `script` (the last step repeats):
  ("answer", text)                       200 with a chat completion whose message content is `text`
  ("status", code, headers, error_text)  that HTTP status with an OpenAI-style error body
  ("sleep", seconds, text)               wait, then answer `text`
  ("reject_schema", text)                400 if the request asks for response_format json_schema, else answer
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedLLM:
    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
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
                return self._answer(step[1], body)

            def _answer(self, text, body):
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
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
