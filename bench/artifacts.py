"""Artifact costs: storing a build output on the head and fetching it back, and an empty build's overhead.

    python bench/artifacts.py [--mib 128] [--files 64] [--steps 20]

Measured in one run, against baselines on the same data and disk:

* **store**: pack a directory (``agent.artifacts.pack``: reproducible tar + sha256) and send it the
  way an attempt does — ``ray.put`` in chunks, an async actor on the head writing them through
  ``HeadArtifactStore`` (verified, renamed into place). Baseline: ``tar cf`` + ``cp`` of the same tree.
* **fetch**: ``GET /v1/tasks/{id}/artifacts/{name}`` from the real sidecar app over loopback HTTP
  (uvicorn), streamed to disk. Baseline: ``cp`` of the blob.
* **empty build**: ``[artifacts] build = "true"`` in a real bwrap sandbox (the build hook, its event
  payload, the publish) per step, against a bare ``sandbox.exec("true")``.

Prints progress to stderr and ONE JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.artifacts import LocalArtifactSink, StagedArtifact, pack, read_chunks


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_tree(root: Path, mib: int, files: int) -> Path:
    tree = root / "dist"
    tree.mkdir(parents=True)
    per_file = (mib << 20) // files
    for index in range(files):
        (tree / f"part-{index:03d}.bin").write_bytes(os.urandom(per_file))
    return tree


def timed(work: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def bench_store(root: Path, mib: int) -> dict[str, Any]:
    import ray

    from cluster.artifact_store import HeadArtifactStore

    @ray.remote(num_cpus=0)
    class Head:  # the scheduler's store_artifact, without the scheduler around it
        def __init__(self, state_dir: str) -> None:
            self.store = HeadArtifactStore(Path(state_dir))

        async def store_artifact(self, ref: dict[str, Any], chunks: list[Any]) -> dict[str, Any]:
            from agent.artifacts import ArtifactRef

            return (await self.store.receive(ArtifactRef.model_validate(ref), chunks)).model_dump()

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        head = Head.remote(str(root / "head-state"))  # type: ignore[attr-defined]

        def store_through_ray() -> StagedArtifact:
            staged = pack(root, "dist", root / "staging", max_bytes=1 << 40)
            chunks = [ray.put(chunk) for chunk in read_chunks(Path(staged.file))]
            ray.get(head.store_artifact.remote(staged.ref.model_dump(mode="json"), chunks))
            return staged

        store_s, staged = timed(store_through_ray)
    finally:
        ray.shutdown()
    baseline_dir = root / "baseline"
    baseline_dir.mkdir()

    def tar_and_cp() -> None:
        subprocess.run(["tar", "cf", str(baseline_dir / "dist.tar"), "-C", str(root), "dist"], check=True)
        subprocess.run(["cp", str(baseline_dir / "dist.tar"), str(baseline_dir / "copy.tar")], check=True)

    baseline_s, _ = timed(tar_and_cp)
    local_s, _ = timed(lambda: LocalArtifactSink(root / "local-store").store(
        pack(root, "dist", root / "staging-local", max_bytes=1 << 40)))
    return {"store_mb_s": round(mib / store_s, 1), "store_local_mb_s": round(mib / local_s, 1),
            "tar_cp_mb_s": round(mib / baseline_s, 1), "artifact_bytes": staged.ref.size,
            "_staged": staged}


def bench_fetch(root: Path, staged: StagedArtifact, mib: int) -> dict[str, Any]:
    import httpx
    import uvicorn

    from agent.events import CheckpointReady, TaskSubmitted
    from cluster.api import create_app
    from cluster.store import Store

    state = root / "head-state"
    store = Store(state / "hearth.db")
    row = store.create_task(project="bench", name="bench", priority=50, model="scripted:demo",
                            spec={"project_path": str(root), "base_commit": "0" * 40},
                            submitted=TaskSubmitted(task_id="pending", name="bench", steps=["S-1"], priority=50))
    store.append_event(CheckpointReady(task_id=row.id, step_id="S-1", commit="0" * 40, snapshot_id="", diff_stat="",
                                       files_changed=[], check_summary="", artifacts=[staged.ref]))
    store.close()
    token = "bench"
    app = create_app(None, state / "hearth.db", token)  # type: ignore[arg-type]  (only reads)
    with tempfile.TemporaryDirectory() as tmp:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        target = Path(tmp) / "fetched.tar"

        def fetch() -> str:
            digest = hashlib.sha256()
            url = f"http://127.0.0.1:{port}/v1/tasks/{row.id}/artifacts/dist"
            with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=None) as reply:
                reply.raise_for_status()
                with open(target, "wb") as handle:
                    for chunk in reply.iter_bytes(1 << 20):
                        digest.update(chunk)
                        handle.write(chunk)
            return digest.hexdigest()

        fetch_s, digest = timed(fetch)
        server.should_exit = True
        thread.join(timeout=30)
        blob = next((state / "artifacts" / "sha256").rglob(staged.ref.sha256))
        cp_s, _ = timed(lambda: shutil.copyfile(blob, Path(tmp) / "cp.tar"))
    return {"fetch_mb_s": round(mib / fetch_s, 1), "cp_mb_s": round(mib / cp_s, 1),
            "fetch_sha256_ok": digest == staged.ref.sha256}


def bench_empty_build(root: Path, steps: int) -> dict[str, Any]:
    from agent.build import ArtifactsConfig, StepBuilder
    from agent.sandbox.base import SandboxConfig
    from agent.sandbox.bwrap import BwrapSandbox

    workspace = root / "ws"
    workspace.mkdir()
    try:
        sandbox = BwrapSandbox(workspace, SandboxConfig(), name="bench-build")
    except Exception as exc:  # a bench reports what cannot run here
        return {"empty_build": {"unavailable": f"{type(exc).__name__}: {exc}"}}
    builder = StepBuilder(ArtifactsConfig(build="true"), project="bench", task_id="T-1", workspace=workspace,
                          staging=root / "build-staging")
    sink = LocalArtifactSink(root / "build-store")
    try:
        bare, built = [], []
        for index in range(steps):
            step = f"S-{index}"
            bare.append(timed(lambda: sandbox.exec("true"))[0] * 1000)
            built.append(timed(lambda s=step: (builder.build(sandbox, s), builder.publish(s, sink)))[0] * 1000)
    finally:
        sandbox.destroy()
    p50_bare, p50_built = statistics.median(bare), statistics.median(built)
    return {"bare_exec_ms_p50": round(p50_bare, 2), "empty_build_ms_p50": round(p50_built, 2),
            "build_hook_over_bare_exec_ms_p50": round(p50_built - p50_bare, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="Size of the build output (MiB)")
    parser.add_argument("--files", type=int, default=64, help="Files in it")
    parser.add_argument("--steps", type=int, default=20, help="Steps for the empty-build overhead")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-artifacts-"))
    try:
        log(f"making {args.mib} MiB in {args.files} files under {root}")
        make_tree(root, args.mib, args.files)
        log("store: pack + ray.put chunks + head store, vs tar + cp")
        stored = bench_store(root, args.mib)
        staged = stored.pop("_staged")
        log("fetch: sidecar GET over loopback HTTP, vs cp")
        fetched = asyncio.run(asyncio.to_thread(bench_fetch, root, staged, args.mib))
        log(f"empty build: {args.steps} steps in bwrap")
        empty = bench_empty_build(root, args.steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"mib": args.mib, "files": args.files, **stored, **fetched, **empty}))


if __name__ == "__main__":
    main()
