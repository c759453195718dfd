"""Real home-lab boxes on one machine, sharing nothing but the network (the ``boxes`` layer).

The head is the real ``hearth up --slots 0`` (it runs no tasks). Each box is the real
``python3 -m cluster.cli node start --address HEAD:PORT --block`` inside its own mount and UTS
namespace (``unshare -m -u``): a private /tmp (so every path the head's tests made under /tmp, the
user's project and the head's state dir included, is absent), a private home, a state dir of its
own (the test reads it at /var/tmp/hearth-boxes-*/NAME, which no box sees), its own hostname, the
Hearth code bound at /tmp/hearth-code with the checkout's own path hidden, and its own loopback
address (the head 127.0.0.2, boxes 127.0.0.3, 127.0.0.4…: Ray treats 127.0.0.1 as "this machine
only"). Only the network is shared.

Everything is stopped by PID: a box by every process in its mount namespace, the head by
``hearth down`` (its recorded sessions). Never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
CODE_IN_BOX = "/tmp/hearth-code"

# Runs as the box's first process, already inside its new namespaces. The token arrives in the
# environment (as if the user had copied the head's ray-token file) and is written into the box.
BOX_SCRIPT = r"""
set -eu
token="$HEARTH_BOX_TOKEN"; unset HEARTH_BOX_TOKEN
mount --make-rprivate /
# Hold the code and the box's state dir on /mnt first: either may live under /tmp, which goes next.
mount -t tmpfs tmpfs /mnt
mkdir /mnt/code /mnt/state
mount --bind -o ro "$HEARTH_BOX_CODE" /mnt/code
mount --bind "$HEARTH_BOX_STATE" /mnt/state
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /tmp/hearth-code /tmp/home /tmp/state
mount --move /mnt/code /tmp/hearth-code
mount --move /mnt/state /tmp/state
umount /mnt
[ -d "$HEARTH_BOX_CODE" ] && mount -t tmpfs tmpfs "$HEARTH_BOX_CODE"
[ -d "$HEARTH_BOX_STATES" ] && mount -t tmpfs tmpfs "$HEARTH_BOX_STATES"
if [ -n "${HEARTH_BOX_MODELS:-}" ]; then  # the embedded model's npm packages, as setup.sh installed them
  mkdir -p /tmp/home/.local/share/hearth/embedded-model
  mount --bind -o ro "$HEARTH_BOX_MODELS" /tmp/home/.local/share/hearth/embedded-model
fi
hostname "$HEARTH_BOX_NAME"
umask 077
printf '%s\n' "$token" > /tmp/head-ray-token
cd /tmp/home
export HOME=/tmp/home HEARTH_STATE_DIR=/tmp/state PYTHONPATH=/tmp/hearth-code
exec "$HEARTH_BOX_PYTHON" -m cluster.cli node start --address "$HEARTH_BOX_HEAD" --host "$HEARTH_BOX_IP" \
  --token-file /tmp/head-ray-token --slots "$HEARTH_BOX_SLOTS" --block
"""


RAN: set[tuple[str, frozenset[str]]] = set()
"""Every ``hearth`` command form (subcommand, option names) these fixtures have run."""


def command_form(argv: list[str]) -> tuple[str, frozenset[str]]:
    """``hearth node start --address A --block`` → ("node start", {"--address", "--block"})."""
    words = [w for w in argv[1:] if not w.startswith("-")]
    sub = " ".join(words[:2]) if words and words[0] in {"node", "image", "openclaw"} else (words[0] if words else "")
    return sub, frozenset(w.split("=", 1)[0] for w in argv if w.startswith("--"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def namespace_members(namespace: str) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_namespace(int(entry.name)) == namespace:
            members.append(int(entry.name))
    return members


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Head:
    """``hearth up --slots 0`` with its own state dir; the CLI as a user runs it."""

    def __init__(self, state: Path, host: str = "127.0.0.2") -> None:
        self.state = state
        self.host = host
        self.env = {**os.environ, "HEARTH_STATE_DIR": str(state), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        self.box_states = Path("/nonexistent")
        """The boxes' state dirs, outside /tmp (which every box replaces with its own); set by
        ``boxes_cluster``."""

    def cli(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        RAN.add(command_form(["hearth", *args]))
        done = subprocess.run([sys.executable, "-m", "cluster.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout_s)
        if check and done.returncode != 0:
            raise AssertionError(f"hearth {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        config = self.state.parent / "head.toml"
        with_config = ["--config", str(config)] if config.exists() else []
        return self.cli("up", "--host", self.host, "--ray-port", str(self.ray_port), "--slots", "0",
                        "--port", str(self.api_port), *with_config, *extra)

    def submit(self, project: Path, model: str, *extra: str) -> str:
        done = self.cli("submit", str(project / "tasks" / "prd.json"), "--model", model, *extra)
        match = re.search(r"submitted (T-\d+)", done.stdout)
        assert match, done.stdout
        return match.group(1)

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/tasks/{task_id}"))

    def store(self) -> Any:
        from cluster.store import Store

        return Store(self.state / "hearth.db", readonly=True)

    @property
    def api_port(self) -> int:
        info = self.info()
        return int(info["api_port"]) if info else self._port

    def info(self) -> dict[str, Any] | None:
        path = self.state / "up.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def address(self) -> str:
        info = self.info()
        assert info is not None
        return str(info["ray_address"])

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        info = self.info()
        assert info is not None
        token = (self.state / "token").read_text().strip()
        reply = httpx.request(method, info["api_url"] + path, headers={"Authorization": f"Bearer {token}"},
                              timeout=60, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def session_pids(self, leader: int) -> list[int]:
        """Processes of the session ``hearth up`` started with ``leader`` (Ray's workers included)."""
        return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _session(int(e.name)) == leader]

    def scheduler_pid(self) -> int:
        info = self.info()
        assert info is not None
        for pid in self.session_pids(int(info["ray_pid"])):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::Scheduler"):
                    return pid
        raise AssertionError("no scheduler actor process in the head's Ray session")

    _port = 0
    ray_port = 0


def _session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


class Box:
    """One box: ``hearth node start --address`` in its own namespaces, on its own loopback address."""

    def __init__(self, name: str, ip: str, head: Head, slots: int = 1) -> None:
        self.name, self.ip, self.head, self.slots = name, ip, head, slots
        self.proc: subprocess.Popen[bytes] | None = None
        self.namespace: str | None = None
        self.log = head.state.parent / f"box-{name}.log"
        self.state = head.box_states / name
        """The box's state dir as the test sees it (the box sees it as /tmp/state)."""

    def start(self) -> None:
        models = Path.home() / ".local" / "share" / "hearth" / "embedded-model"
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)
        env = {**os.environ, "HEARTH_BOX_TOKEN": (self.head.state / "ray-token").read_text().strip(),
               "HEARTH_BOX_CODE": str(REPO), "HEARTH_BOX_NAME": self.name, "HEARTH_BOX_IP": self.ip,
               "HEARTH_BOX_HEAD": self.head.address, "HEARTH_BOX_PYTHON": sys.executable,
               "HEARTH_BOX_SLOTS": str(self.slots), "HEARTH_BOX_STATE": str(self.state),
               "HEARTH_BOX_STATES": str(self.head.box_states),
               "HEARTH_BOX_MODELS": str(models) if models.is_dir() else ""}
        for leak in ("HEARTH_STATE_DIR", "PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            env.pop(leak, None)
        RAN.add(command_form(["hearth", "node", "start", *BOX_SCRIPT.split("node start", 1)[1].split()]))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--uts", "--propagation", "private",
                                          "bash", "-c", BOX_SCRIPT], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd="/")
        self.namespace = wait_until(lambda: self._own_namespace(), 30, f"box {self.name}'s namespace")

    def _own_namespace(self) -> str | None:
        assert self.proc is not None
        ns = mount_namespace(self.proc.pid)
        return ns if ns and ns != mount_namespace(os.getpid()) else None

    def joined(self) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"box {self.name} exited {self.proc.returncode}:\n{text[-3000:]}")
        return "joined the head" in text

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command inside the box's namespaces (what the box itself sees)."""
        assert self.proc is not None
        return subprocess.run(["nsenter", f"--target={self.proc.pid}", "--mount", "--uts", *command],
                              capture_output=True, text=True, timeout=30)

    def pids(self) -> list[int]:
        return namespace_members(self.namespace) if self.namespace else []

    def kill(self) -> list[int]:
        """SIGKILL every process in the box's mount namespace, by PID (a power cut)."""
        pids = self.pids()
        kill_pids(pids)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        wait_until(lambda: not [p for p in self.pids() if process_running(p)], 30, f"box {self.name} dead")
        return pids


def process_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def boxes_cluster(names_ips: list[tuple[str, str]], slots: int = 1,
                  head_toml: str = "") -> Iterator[tuple[Head, list[Box]]]:
    """A head (``--slots 0``, ``head_toml`` as its config file) and boxes joined to it; everything
    stopped by PID afterwards."""
    root = Path(tempfile.mkdtemp(prefix="hearth-boxes-"))
    head = Head(root / "head-state")
    head.state.mkdir()
    head.box_states = Path(tempfile.mkdtemp(prefix="hearth-boxes-", dir="/var/tmp"))
    if head_toml:
        (root / "head.toml").write_text(head_toml)
    head._port = free_port()
    head.ray_port = free_port()
    boxes: list[Box] = []
    try:
        head.up()
        boxes = [Box(name, ip, head, slots) for name, ip in names_ips]
        for box in boxes:  # one at a time: Ray gives a starting raylet only 30 s to register
            box.start()
            wait_until(box.joined, 180, f"box {box.name} joined")
        yield head, boxes
    finally:
        for box in boxes:
            kill_pids(box.pids())
            if box.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    box.proc.wait(timeout=30)
        with contextlib.suppress(Exception):
            head.cli("down", timeout_s=120, check=False)
        if os.environ.get("HEARTH_TEST_KEEP_BOXES"):
            print(f"kept: {root} {head.box_states}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(head.box_states, ignore_errors=True)
