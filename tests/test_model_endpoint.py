"""A catalogue entry pointed at a server the user already runs (vLLM, llama.cpp…): the loop talks to
it with the entry's limits, and the scheduler needs no GPU for it. The server here is a small
OpenAI-compatible stand-in on loopback (scripted, named so) that records what it was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.models import chat_model_for
from cluster.scheduling.snapshot import model_spec


class _Handler(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["_auth"] = self.headers.get("Authorization", "")
        body["_path"] = self.path
        self.received.append(body)
        reply = {"choices": [{"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": "cut"}}],
                 "usage": {"prompt_tokens": 321, "completion_tokens": 64}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted_server() -> Iterator[str]:
    _Handler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_catalogue_entry_can_point_at_a_running_server(scripted_server: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_text(f"""
[models.my-vllm]
engine = "vllm"
model = "Qwen/Qwen2.5-Coder-32B-Instruct"
served_name = "qwen-coder"
base_url = "{scripted_server}"
api_key = "s3cret"
vram_mib = 0
context = 32768
max_output_tokens = 3000
""")
    chat = chat_model_for("docker:my-vllm")
    assert (chat.limits.context_window, chat.limits.max_output_tokens, chat.limits.prompt) == (32768, 3000, "capable")
    reply = chat.complete([{"role": "user", "content": "hi"}], [])
    [sent] = _Handler.received
    assert sent["_path"] == "/v1/chat/completions" and sent["model"] == "qwen-coder"
    assert sent["max_tokens"] == 3000 and sent["_auth"] == "Bearer s3cret"
    assert reply.finish_reason == "length" and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (321, 64)
    spec = model_spec("docker:my-vllm")
    assert not spec.needs_gpu and spec.vram_mib == 0


def test_a_bad_base_url_is_refused_with_the_key_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.models.catalogue import CatalogueError, load_catalogue

    entry = '[models.x]\nengine = "llamacpp"\nmodel = "m.gguf"\nbase_url = "10.0.0.5:8080"\n'
    (tmp_path / "models.toml").write_text(entry)
    with pytest.raises(CatalogueError, match=r"models\.x.*base_url '10\.0\.0\.5:8080' is not an http\(s\) URL"):
        load_catalogue(tmp_path / "models.toml")
