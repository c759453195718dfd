"""A box joining the head: who it is, the cluster token, and the checks made before ``ray start``.

``hearth node start --address HEAD:PORT`` checks, in this order, each with a deadline and an error
that names the box, the head and the cause (never a retry loop without end):

1. the address is ``HOST:PORT``;
2. the box has the cluster token (``--token-file``, copied to ``<state dir>/ray-token``, 0600);
3. the head's port answers TCP (``cannot reach the head``);
4. the head's Ray accepts the token (``refused this box's cluster token``);
5. the head runs the same Hearth (a fingerprint of its code) and the same Ray and Python.

Only then does Ray start. Every node also carries its versions as Ray labels (``hearth-version``,
``ray-version``), so the scheduler never places a task on a box whose Hearth differs from the
head's, whoever started it (``refusal``), and ``hearth nodes`` says why.

Ray's token auth (``RAY_AUTH_MODE=token``, the token in the file ``RAY_AUTH_TOKEN_PATH`` names) is
on for every node Hearth starts: without it anyone who reaches a Ray port can run code as Hearth.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cluster.private_files import write_private

RAY_TOKEN_FILE = "ray-token"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
VERSION_LABEL = "hearth-version"
RAY_VERSION_LABEL = "ray-version"
ROLE_LABEL = "hearth-role"
BOX_LABEL = "hearth-box"


class JoinError(RuntimeError):
    """A box cannot join the head; the message names the box, the head and the cause."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@functools.cache
def hearth_version() -> str:
    """``<release>-<12 hex>``: the release plus a fingerprint of the agent/ and cluster/ sources, so
    two boxes with the same release but different code are told apart. Valid as a Ray label value."""
    try:
        release = metadata.version("hearth")
    except metadata.PackageNotFoundError:
        release = "0"
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in ("agent", "cluster"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{release}-{digest.hexdigest()[:12]}"


def ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def version_labels() -> dict[str, str]:
    return {VERSION_LABEL: hearth_version(), RAY_VERSION_LABEL: ray_version()}


def refusal(labels: dict[str, str], head_hearth: str, head_ray: str) -> str | None:
    """Why the scheduler must not place tasks on a node with these labels (None: it may).

    A node without version labels (started by hand with plain ``ray start``) is not refused."""
    theirs = labels.get(VERSION_LABEL)
    if theirs and theirs != head_hearth:
        return f"runs Hearth {theirs}, the head runs {head_hearth}"
    their_ray = labels.get(RAY_VERSION_LABEL)
    if their_ray and their_ray != head_ray:
        return f"runs Ray {their_ray}, the head runs {head_ray}"
    return None


def box_name() -> str:
    return socket.gethostname()


def box_labels(role: str) -> dict[str, str]:
    """``hearth-role`` (head or box) and ``hearth-box`` (the hostname, as a Ray label value), so a
    project can pin tasks to a box by name: ``allowed_nodes = ["hearth-box=anvil"]``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", box_name()).strip("-")[:63] or "box"
    return {ROLE_LABEL: role, BOX_LABEL: name}


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"--address {address!r}: give the head as HOST:PORT, e.g. 192.168.1.10:6379", 2)
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        # Ray turns a loopback head address into this machine's LAN address before dialling it,
        # and a head started on 127.0.0.1 listens on loopback only: the join could never work.
        raise JoinError(f"--address {address!r}: a head on {host} serves this machine only; start the head "
                        f"with --host <its LAN address> and join that address", 2)
    return host, int(port)


def ray_env(token_path: Path, host: str | None = None) -> dict[str, str]:
    """The environment every Ray process of this node (and every driver of it) runs with."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN", None)  # the file is the one source of the token
    if host in LOOPBACK_NAMES:
        # Ray rewrites a loopback --node-ip-address to the machine's LAN address (and then binds its
        # agents there) unless it believes multi-node clusters are off; a one-box head wants loopback.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    else:
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def install_token(state_dir: Path, token_file: Path | None, box: str) -> Path:
    """The box's copy of the cluster token: ``token_file`` copied to ``<state_dir>/ray-token`` (0600,
    never world-readable even briefly), or the copy an earlier start made."""
    target = state_dir / RAY_TOKEN_FILE
    if token_file is None:
        if target.exists():
            return target
        raise JoinError(f"box {box}: no cluster token; copy the head's <state dir>/{RAY_TOKEN_FILE} "
                        f"to this box and pass --token-file PATH", 2)
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise JoinError(f"box {box}: --token-file {token_file}: cannot read: {exc.strerror}", 2) from None
    if not token:
        raise JoinError(f"box {box}: --token-file {token_file} is empty; copy the head's "
                        f"<state dir>/{RAY_TOKEN_FILE}", 2)
    write_private(target, token + "\n")
    return target


def reach(host: str, port: int, box: str, timeout_s: float) -> None:
    """TCP to the head's Ray port within ``timeout_s`` (retried: the head may be starting)."""
    deadline = time.monotonic() + timeout_s
    cause = "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(timeout_s, 0.5))):
                return
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise JoinError(f"box {box} cannot reach the head at {host}:{port}: {cause} (is `hearth node "
                            f"start --head` running there, and does its firewall let port {port} in?)")
        time.sleep(0.5)


class HeadFacts(BaseModel):
    hearth_version: str | None
    ray_version: str | None
    python_version: str | None


_PROBE = """
import json, sys
import ray._raylet
from ray.exceptions import AuthenticationError
try:
    client = ray._raylet.GcsClient(address=sys.argv[1])
    nodes = client.get_all_node_info(timeout=10)
    meta = client.internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster", timeout=10)
except AuthenticationError as exc:
    print(json.dumps({"error": "auth", "detail": str(exc)[:300]})); sys.exit(0)
except Exception as exc:
    print(json.dumps({"error": "other", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"})); sys.exit(0)
head = [dict(i.labels) for i in nodes.values() if i.is_head_node and i.state == 0]
print(json.dumps({"labels": head[0] if head else {}, "meta": json.loads(meta) if meta else {}}))
"""


def probe_head(address: str, token_path: Path, box: str, timeout_s: float) -> HeadFacts:
    """Ask the head's GCS (with the token) for its versions; a separate process, so Ray's token cache
    and its retries never outlive ``timeout_s``."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, address], env=ray_env(token_path),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise JoinError(f"box {box}: the head at {address} accepted a connection but its Ray did not "
                        f"answer within {timeout_s:.0f} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise JoinError(f"box {box}: could not ask the head at {address} ({done.stderr.strip()[-300:]})")
    reply: dict[str, Any] = json.loads(lines[-1])
    if reply.get("error") == "auth":
        raise JoinError(f"box {box}: the head at {address} refused this box's cluster token ({token_path}); "
                        f"copy the head's <state dir>/{RAY_TOKEN_FILE} again and pass --token-file")
    if reply.get("error"):
        raise JoinError(f"box {box}: the head at {address} did not answer as a Ray head: {reply['detail']}")
    labels, meta = reply["labels"], reply["meta"]
    return HeadFacts(hearth_version=labels.get(VERSION_LABEL), ray_version=meta.get("ray_version"),
                     python_version=meta.get("python_version"))


def check_versions(head: HeadFacts, address: str, box: str) -> None:
    python = ".".join(map(str, sys.version_info[:3]))
    mine = {"Hearth": hearth_version(), "Ray": ray_version(), "Python": python}
    theirs = {"Hearth": head.hearth_version, "Ray": head.ray_version, "Python": head.python_version}
    for what, version in mine.items():
        if theirs[what] and theirs[what] != version:
            raise JoinError(f"box {box} runs {what} {version} but the head at {address} runs {what} "
                            f"{theirs[what]}; install the same {what} on every box", 2)


def check_join(address: str, token_path: Path, box: str, timeout_s: float = 30.0) -> HeadFacts:
    """Every check before ``ray start --address``; raises ``JoinError`` naming the first failure."""
    host, port = parse_address(address)
    reach(host, port, box, timeout_s)
    facts = probe_head(f"{host}:{port}", token_path, box, timeout_s)
    check_versions(facts, address, box)
    return facts
