"""How code moves between a node and the head: the node's side.

A node never reads the project's path (boxes share nothing but the network). It asks the head
(``CodeHost``) for the commit a task starts from and sends every checkpoint back:

- ``NodeCode`` keeps a bare cache per project under the node's own state dir
  (``<node state>/repos/<project>.git``). A commit not in the cache comes from the head as a git
  bundle that leaves out what the cache already has, so the second task of a project on a box moves
  only new commits. A task's workspace is cloned from that cache.
- Each checkpoint goes back as an incremental bundle (``<commits the head has>..<checkpoint>``); the
  head verifies it, keeps it under a ref per attempt, and updates the user's repository.
- ``put_blob``/``get_blob`` carry what a person reads (transcripts, check output) and the
  conversation of a step parked on a question, so any box can resume it.

The Ray implementation of ``CodeHost`` is in cluster/task_actor.py (calls to the scheduler; the
bundle bytes ride Ray's object store); cluster/repos.py is the head's side.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

import git
from filelock import FileLock

from agent.project import prepare_workspace, task_branch


class TransferError(RuntimeError):
    """Code could not move between this node and the head: the head lacks a commit, a bundle does not
    verify, the project's source refused the task's branch… The message names the cause."""


class CodeHost(Protocol):
    """The head's copy of one task's project, as one attempt on a node sees it."""

    def bundle(self, commit: str, have: list[str]) -> bytes:
        """A bundle whose ref ``refs/hearth/fetch/<commit>`` is ``commit``, without the history reachable
        from ``have`` (commits this node has); empty when ``have`` covers it. Raises TransferError."""
        ...

    def checkpoint(self, commit: str, bundle: bytes) -> None:
        """The task branch now ends at ``commit``; ``bundle`` holds the commits the head lacks (empty:
        it has them all, as after a rollback). Raises TransferError."""
        ...

    def put_blob(self, kind: str, name: str, data: bytes) -> None:
        """Keep a file a person reads (or a parked conversation) on the head, under the task."""
        ...

    def get_blob(self, kind: str, name: str) -> bytes | None: ...


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """git on the node's cache (Hearth's own repository: no sandbox ever writes it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_TERMINAL_PROMPT="0")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=False)


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> str:
    if result.returncode != 0:
        raise TransferError(f"{what}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


def _has_commit(repo: git.Repo, commit: str) -> bool:
    try:
        repo.git.cat_file("-e", f"{commit}^{{commit}}")
    except git.GitCommandError:
        return False
    return True


class NodeCode:
    """One attempt's code on this node: the project's cache, the task's workspace, its checkpoints."""

    def __init__(self, host: CodeHost, cache: Path, task_id: str) -> None:
        self.host = host
        self.cache = cache
        """``<node state>/repos/<project>.git``: shared by the project's attempts on this node."""
        self.task_id = task_id
        self.known: set[str] = set()
        """Commits the head is known to have: a checkpoint bundle leaves them (and their history) out."""

    def _ensure_cached(self, commit: str) -> None:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache) + ".lock"):
            if not (self.cache / "HEAD").exists():
                _check(_git(["init", "--bare", "-q", str(self.cache)], self.cache.parent), "node cache")
                _git(["config", "transfer.unpackLimit", "1"], self.cache)  # keep bundles packed
            if _git(["cat-file", "-e", f"{commit}^{{commit}}"], self.cache).returncode == 0:
                return
            listed = _check(_git(["for-each-ref", "--format=%(objectname)", "refs/heads/hearth-fetch/"],
                                 self.cache), "node cache")
            data = self.host.bundle(commit, listed.split())
            if data:
                with tempfile.NamedTemporaryFile(dir=self.cache, suffix=".bundle") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    # refs/heads/…: a clone of the cache (any clone mode) carries every fetched commit.
                    _check(_git(["fetch", "--quiet", "--no-write-fetch-head", tmp.name,
                                 f"+refs/hearth/fetch/{commit}:refs/heads/hearth-fetch/{commit}"], self.cache),
                           f"taking {commit[:12]} from the head's bundle")
            else:
                _git(["update-ref", f"refs/heads/hearth-fetch/{commit}", commit], self.cache)
            if _git(["cat-file", "-e", f"{commit}^{{commit}}"], self.cache).returncode != 0:
                raise TransferError(f"the head's bundle did not carry {commit[:12]}")

    def workspace(self, commit: str, workdir: Path) -> git.Repo:
        """A fresh clone at ``workdir`` on the task branch at ``commit`` (fetched from the head)."""
        self._ensure_cached(commit)
        repo = prepare_workspace(self.cache, self.task_id, commit, workdir)
        self.known.add(commit)
        return repo

    def adopt(self, commit: str) -> None:
        """A workspace kept from an earlier attempt on this node: the head has ``commit``."""
        self.known.add(commit)

    def send_checkpoint(self, repo: git.Repo) -> str:
        """Send the task branch's tip to the head (only the commits it lacks); returns the tip."""
        tip = repo.head.commit.hexsha
        # A rollback restores the workspace's snapshot, git dir included: a rejected checkpoint's
        # commit may be gone from it (the head keeps it), so exclude only what is still here.
        self.known = {c for c in self.known if _has_commit(repo, c)}
        if tip in self.known:
            self.host.checkpoint(tip, b"")
            return tip
        with tempfile.TemporaryDirectory(prefix="hearth-checkpoint-") as tmp:
            path = Path(tmp) / "checkpoint.bundle"
            try:
                repo.git.bundle("create", "-q", str(path), f"refs/heads/{task_branch(self.task_id)}",
                                *[f"^{c}" for c in sorted(self.known)])
            except git.GitCommandError as exc:
                raise TransferError(f"cannot bundle checkpoint {tip[:12]}: {exc.stderr.strip()}") from None
            data = path.read_bytes()
        self.host.checkpoint(tip, data)
        self.known.add(tip)
        return tip
