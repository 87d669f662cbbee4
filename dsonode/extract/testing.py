"""A local OpenAI-compatible server that serves recorded completions (for tests and benchmarks).

    with RecordedLLMServer("tests/fixtures/llm") as server:     # 127.0.0.1, a free port
        config = LLMConfig(base_url=server.base_url, model="recorded")

A real HTTP server (the stdlib's ThreadingHTTPServer in a thread), so the LLM client is tested
over real sockets: timeouts, retries and bounded reads all happen for real. It answers
`POST /v1/chat/completions`, finds the stage and the task in the request (the prompts of
`dsonode.extract.prompts` carry "Task id: ..." and "Attempt i of n") and replies from the
fixture file of that task:

    {"task_id": "math/rational-equation/0",
     "summary": {"attempts": ["summary of attempt 1", ...]},        # or {"responses": [...]}
     "operations": {"responses": [{"status": 429, "retry_after": 0},
                                  {"status": 200, "content": "[{\\"op\\": \\"add\\", ...}]"}]}}

A response is {"status": 200, "content": "..."} (a completion), {"status": N} (an error),
{"delay_s": s, ...} (wait first: a timeout for a client with a shorter one) or {"body": "..."}
(raw bytes, e.g. not JSON). The i-th request of one (task, stage, attempt) gets the i-th
response; the last one repeats. Tasks without a fixture get a plain summary and "[]".
Every request is recorded in `requests` (stage, task id, attempt, whether a bearer key came).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["RecordedLLMServer"]

MAX_REQUEST_BYTES = 1024 * 1024
_TASK = re.compile(r"^Task id: (.+)$", re.M)
_ATTEMPT = re.compile(r"^Attempt (\d+) of \d+$", re.M)
DEFAULT_SUMMARY = "1. The agent attempted the task. HELPFUL.\nKey point: nothing notable."


def _completion(content: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorded",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class RecordedLLMServer:
    def __init__(self, fixtures: str | Path | None = None, host: str = "127.0.0.1") -> None:
        self.fixtures: dict[str, dict[str, Any]] = {}
        if fixtures is not None:
            for path in sorted(Path(fixtures).glob("*.json")):
                data = json.loads(path.read_text())
                self.fixtures[data["task_id"]] = data
        self.requests: list[dict[str, Any]] = []
        self._counts: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):  # typeshed allows it (AF_UNIX); a TCP server has a str
            host = host.decode()
        return f"http://{host}:{port}/v1"

    def start(self) -> RecordedLLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # delayed responses stop waiting
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RecordedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, stage: str | None = None, task_id: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (stage is None or r["stage"] == stage)
                and (task_id is None or r["task_id"] == task_id)
            )

    # -- answering --

    def _pick(self, stage: str, task_id: str, attempt: int) -> dict[str, Any]:
        with self._lock:
            key = (stage, task_id, attempt)
            n = self._counts.get(key, 0)
            self._counts[key] = n + 1
        fixture = self.fixtures.get(task_id, {}).get(stage)
        if fixture is None:
            return {"status": 200, "content": DEFAULT_SUMMARY if stage == "summary" else "[]"}
        if "attempts" in fixture:
            texts = fixture["attempts"]
            return {"status": 200, "content": texts[min(attempt, len(texts)) - 1]}
        responses = fixture["responses"]
        return responses[min(n, len(responses) - 1)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: tests read `requests`
                pass

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path.rstrip("/") != "/v1/chat/completions" or length > MAX_REQUEST_BYTES:
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                request = json.loads(self.rfile.read(length))
                user = next((m["content"] for m in request["messages"] if m["role"] == "user"), "")
                task = _TASK.search(user)
                attempt = _ATTEMPT.search(user)
                stage = "summary" if attempt else "operations"
                record = {
                    "stage": stage,
                    "task_id": task.group(1).strip() if task else "",
                    "attempt": int(attempt.group(1)) if attempt else 0,
                    "authorized": self.headers.get("Authorization", "").startswith("Bearer "),
                    "model": request.get("model"),
                }
                with server._lock:
                    server.requests.append(record)
                reply = server._pick(stage, record["task_id"], record["attempt"])
                if reply.get("delay_s") and server._stopping.wait(float(reply["delay_s"])):
                    return  # shutting down
                status = int(reply.get("status", 200))
                if "body" in reply:
                    body = reply["body"].encode()
                elif status == 200:
                    body = json.dumps(_completion(reply["content"], str(request["model"])))
                    body = body.encode()
                else:
                    body = json.dumps({"error": {"message": f"recorded HTTP {status}"}}).encode()
                headers = {}
                if "retry_after" in reply:
                    headers["Retry-After"] = str(reply["retry_after"])
                # the client may have given up (timeout): that is the point of a delay
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(status, body, headers)

        return Handler
