"""Benchmark the embedded model server (SmolLM2-135M on node-llama-cpp, CPU).

    python bench/models.py [--threads N] [--ctx 4096] [--starts 3]

Progress goes to stderr; the last line on stdout is one JSON object:

* ``tokens_per_s``: decode rate (server timings, median of 3 runs of about 64 generated tokens);
* ``cold_start_s``: spawn of ``node server.mjs`` until ``/health`` answers 200 (median of 3 starts);
* ``warm_request_ms_p50``: wall time of a short tool-call request (two tools, ``tool_choice: auto``)
  on a warm server, median of 5.

Each server is started in a temporary state dir and stopped (by pid) before the script exits.

With Docker (skip with ``--no-docker``; a reason is reported under ``docker_unavailable``), the same
model through ``DockerModelRuntime`` on the local ``hearth/llamacpp-cpu`` image (Hearth-managed
dockerd, started and stopped here unless one already runs):

* ``docker_cold_start_s``: ``docker run`` until ``/health`` answers 200 (median of ``--starts``);
* ``docker_warm_request_ms_p50``: the same tool-call request as above, median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.models.embedded import EmbeddedRuntime

NAME = "smollm2-135m"
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(props), "additionalProperties": False}}}
    for name, description, props in (
        ("shell", "Run a shell command.", {"command": {"type": "string"}}),
        ("write_file", "Create or overwrite a file.",
         {"path": {"type": "string"}, "content": {"type": "string"}}),
    )
]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def chat(base_url: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    reply = httpx.post(f"{base_url}/chat/completions", json={"model": NAME, **body}, timeout=300)
    elapsed = time.perf_counter() - started
    reply.raise_for_status()
    data: dict[str, Any] = reply.json()
    return data, elapsed


def docker_figures(starts: int) -> dict[str, Any]:
    """Cold start and warm tool-call latency of the local CPU llama.cpp image through Docker."""
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL, build_local_llamacpp_image
    from agent.sandbox.docker_base_image import ensure_base_image
    from agent.sandbox.docker_engine import start_dockerd

    daemon = start_dockerd()
    client = daemon.client()
    try:
        started = time.perf_counter()
        ensure_base_image(client)
        build = build_local_llamacpp_image(client)
        log(f"docker images ready in {time.perf_counter() - started:.1f} s {build}")
        with tempfile.TemporaryDirectory(prefix="hearth-bench-docker-") as tmp:
            runtime = DockerModelRuntime(state_dir=Path(tmp), client=client, node=f"bench-{os.getpid()}",
                                         warm_up=False)
            cold: list[float] = []
            try:
                for i in range(starts):
                    runtime.ensure(LOCAL_MODEL)
                    assert runtime.last_cold_start_s is not None
                    cold.append(runtime.last_cold_start_s)
                    log(f"docker cold start {i + 1}: {runtime.last_cold_start_s:.2f} s")
                    if i < starts - 1:
                        runtime.release(LOCAL_MODEL)
                base = runtime.ensure(LOCAL_MODEL).base_url
                messages = [{"role": "system", "content": "You are a software engineer. Use the tools."},
                            {"role": "user", "content": 'Create hello.txt containing "hello world".'}]
                body = {"messages": messages, "tools": TOOLS, "tool_choice": "auto", "temperature": 0,
                        "max_tokens": 128}
                chat(base, body)
                warm: list[float] = []
                for i in range(5):
                    data, wall = chat(base, body)
                    assert data["choices"][0]["finish_reason"] == "tool_calls", data
                    warm.append(wall * 1000)
                    log(f"docker tool-call request {i + 1}: {wall * 1000:.0f} ms")
            finally:
                runtime.release(LOCAL_MODEL)
        return {"docker_cold_start_s": round(statistics.median(cold), 2),
                "docker_warm_request_ms_p50": round(statistics.median(warm), 1),
                "docker_cold_start_s_runs": [round(c, 2) for c in cold],
                "docker_warm_request_ms_runs": [round(w, 1) for w in warm],
                "docker_dockerd_start_s": round(daemon.start_s, 2)}
    finally:
        client.close()
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=None, help="default: EmbeddedRuntime's choice")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--no-docker", action="store_true", help="skip the docker figures")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmp:
        cold: list[float] = []
        for i in range(args.starts):
            rt = EmbeddedRuntime(Path(tmp) / f"cold{i}", ctx=args.ctx, threads=args.threads, warm_up=False,
                                 auto_install=False)
            try:
                rt.ensure(NAME)
                assert rt.last_cold_start_s is not None
                cold.append(rt.last_cold_start_s)
                log(f"cold start {i + 1}: {rt.last_cold_start_s:.2f} s")
            finally:
                rt.release(NAME)

        rt = EmbeddedRuntime(Path(tmp) / "warm", ctx=args.ctx, threads=args.threads, auto_install=False)
        try:
            base = rt.ensure(NAME).base_url
            decode: list[float] = []
            generated: list[int] = []
            for i in range(3):
                prompt = f"Write a long story about robot number {i + 1}."
                data, wall = chat(base, {"messages": [{"role": "user", "content": prompt}],
                                         "temperature": 0, "max_tokens": 64})
                rate = data["timings"]["predicted_per_second"]
                decode.append(rate)
                generated.append(data["usage"]["completion_tokens"])
                log(f"decode run {i + 1}: {data['usage']['completion_tokens']} tokens, {rate} tok/s "
                    f"(server), {wall:.2f} s wall")

            messages = [{"role": "system", "content": "You are a software engineer. Use the tools."},
                        {"role": "user", "content": 'Create hello.txt containing "hello world".'}]
            chat(base, {"messages": messages, "tools": TOOLS, "tool_choice": "auto", "temperature": 0,
                        "max_tokens": 128})  # first use of this prompt and grammar
            warm: list[float] = []
            for i in range(5):
                data, wall = chat(base, {"messages": messages, "tools": TOOLS, "tool_choice": "auto",
                                         "temperature": 0, "max_tokens": 128})
                assert data["choices"][0]["finish_reason"] == "tool_calls", data
                warm.append(wall * 1000)
                log(f"tool-call request {i + 1}: {wall * 1000:.0f} ms, "
                    f"{data['usage']['completion_tokens']} tokens generated")
        finally:
            rt.release(NAME)

    result = {
        "tokens_per_s": round(statistics.median(decode), 1),
        "cold_start_s": round(statistics.median(cold), 2),
        "warm_request_ms_p50": round(statistics.median(warm), 1),
        "tokens_per_s_runs": decode,
        "tokens_generated_runs": generated,
        "cold_start_s_runs": [round(c, 2) for c in cold],
        "warm_request_ms_runs": [round(w, 1) for w in warm],
        "threads": rt.threads,
        "ctx": args.ctx,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if not args.no_docker:
        try:
            result.update(docker_figures(args.starts))
        except Exception as exc:
            result["docker_unavailable"] = f"{type(exc).__name__}: {exc}"[:500]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
