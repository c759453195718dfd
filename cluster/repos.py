"""The head's copy of each project's repository: the only place a node gets code from or sends it to.

Boxes share nothing but the network, so no node may read the project's path. The head keeps a bare
mirror per project under its state dir (``<state>/repos/<project>.git``), refreshed from the
project's source: a path on the head or a git URL (Forgejo on the NAS, ``git daemon``, ssh…).

Refs in a mirror:

- ``refs/source/heads/*``, ``refs/source/HEAD``: the source as last fetched (never pushed back;
  its ``hearth/*`` branches left out: they are this mirror's own ``refs/heads/hearth/*``).
- ``refs/hearth/fetch/<sha>``: pins a commit a node asked for (a bundle needs a ref to carry).
- ``refs/heads/hearth/<task>``: the task's branch, where its latest checkpoint is.
- ``refs/hearth/attempts/<task>/<n>-<id>``: attempt n's latest checkpoint (``<id>``: the attempt id's
  random part, so a ``hearth restart``, which numbers attempts from 1 again, never reuses a ref). A
  restart from step 0 rewrites the branch but never these: an earlier attempt's commits stay reachable.

Code moves as git bundles (``git bundle``): the node asks for a commit and says which commits it
already has; each checkpoint comes back as an incremental bundle (``<known>..<checkpoint>``) that
the head verifies before fetching. The bundle bytes ride Ray's object store (see cluster/scheduler.py),
so there is no second server to secure. The head then pushes the branch and the attempt refs to the
project's source (``publish``). docs/architecture.md ("Code goes through the head") says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.transport import TransferError

GIT_TIMEOUT_S = 300.0
"""A fetch from, or push to, a remote source that takes longer is an error (a hung NAS)."""
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
"""A full object id (SHA-1 or SHA-256), as a node names the checkpoint it sent."""
SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class ProjectSourceError(ValueError):
    """The project's source cannot be read: an unreachable URL, not a repository, no hearth.toml…"""


class PublishError(RuntimeError):
    """The project's source refused the task's branch (``rejected``) or could not be reached."""

    def __init__(self, message: str, *, rejected: bool) -> None:
        super().__init__(message)
        self.rejected = rejected


def is_git_url(source: str) -> bool:
    """``https://…``, ``git://…``, ``ssh://…``, ``file://…`` or scp-like ``user@host:path``."""
    return "://" in source or bool(SCP_LIKE.match(source))


def git_env() -> dict[str, str]:
    """The environment of the head's own git: never prompts (a URL that needs a password fails at
    once instead of hanging the scheduler), and takes no identity or hooks from the user's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
               GIT_SSH_COMMAND="ssh -o BatchMode=yes", GIT_CONFIG_NOSYSTEM="1")
    return env


def run_git(args: list[str], *, cwd: Path | None = None, timeout: float = GIT_TIMEOUT_S,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``git args`` with the head's environment; the caller checks ``returncode``."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=git_env(), input=stdin, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["git", *args], 124, b"", f"timed out after {timeout:g} s".encode())


def _err(result: subprocess.CompletedProcess[bytes]) -> str:
    text = (result.stderr or result.stdout).decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("hint:")]
    return " / ".join(lines[-4:]) or f"git exited with {result.returncode}"


class HeadRepos:
    """The bare mirrors under ``root``; every method is thread-safe per project."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._fetched: dict[tuple[str, str], tuple[float, str]] = {}
        """(project, source) → (when its last fetch began, the HEAD it found)."""
        self._push_locks: dict[str, threading.Lock] = {}
        self._to_publish: dict[tuple[str, str], set[str]] = {}
        """(project, source) → tasks whose refs wait for the next push there."""
        self._published: dict[tuple[str, str], PublishError] = {}
        """(project, task) → what went wrong with the push that carried it, until its publish raises it."""

    def _lock(self, project: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project, threading.Lock())

    def _push_lock(self, project: str) -> threading.Lock:
        with self._guard:
            return self._push_locks.setdefault(project, threading.Lock())

    def mirror(self, project: str) -> Path:
        if not SAFE_NAME.match(project):
            raise ProjectSourceError(f"project name {project!r} is not usable as a directory name")
        return self.root / f"{project}.git"

    def _git(self, project: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run_git(["--git-dir", str(self.mirror(project)), *args], stdin=stdin)

    def _ensure_mirror(self, project: str) -> Path:
        path = self.mirror(project)
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            result = run_git(["init", "--bare", "-q", str(path)])
            if result.returncode != 0:
                raise ProjectSourceError(f"project {project}: cannot make its mirror at {path}: {_err(result)}")
            # Keep what arrives as packs: a bundle then reuses packed (compressed, deltified) objects
            # instead of compressing loose ones again (50 MB of loose blobs: ~8 CPU-s; packed: ~0.3).
            self._git(project, "config", "transfer.unpackLimit", "1")
        return path

    # from the project's source ------------------------------------------------------------------
    def refresh(self, project: str, source: str) -> str:
        """Fetch the source's branches and HEAD into the mirror; returns the source's HEAD commit.

        Calls that wait for the same fetch share it: a fetch that began after this call began saw the
        source as it was then or later, so its HEAD is as good as a fetch of this call's own (a
        thousand submissions at once make a few fetches, not a thousand)."""
        asked = time.monotonic()
        with self._lock(project):
            began, head = self._fetched.get((project, source), (-1.0, ""))
            if began >= asked:
                return head
            began = time.monotonic()
            self._ensure_mirror(project)
            # Not the source's hearth/* branches: Hearth pushed them from here (a thousand tasks made
            # each submission's fetch compare, and the mirror keep, a thousand refs more).
            result = self._git(project, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", source,
                               "+HEAD:refs/source/HEAD", "+refs/heads/*:refs/source/heads/*", "^refs/heads/hearth/*")
            if result.returncode != 0:
                raise ProjectSourceError(f"project {project}: cannot fetch from {source}: {_err(result)}")
            head = self.resolve(project, "refs/source/HEAD")
            self._fetched[(project, source)] = (began, head)
            return head

    @staticmethod
    def fetch_source_head(source: str, into: Path) -> str:
        """Before the project's name is known (a URL's hearth.toml names it): fetch ``source``'s HEAD
        into a scratch bare repo ``into``; returns the commit. Raises ProjectSourceError."""
        if not (into / "HEAD").exists():
            run_git(["init", "--bare", "-q", str(into)])
        result = run_git(["--git-dir", str(into), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                          "--depth", "1", source, "+HEAD:refs/source/HEAD"])
        if result.returncode != 0:
            raise ProjectSourceError(f"cannot fetch the project from {source}: {_err(result)}")
        return run_git(["--git-dir", str(into), "rev-parse", "refs/source/HEAD"]).stdout.decode().strip()

    @staticmethod
    def read_scratch_file(scratch: Path, commit: str, relpath: str) -> str | None:
        result = run_git(["--git-dir", str(scratch), "show", f"{commit}:{relpath}"])
        return result.stdout.decode() if result.returncode == 0 else None

    def resolve(self, project: str, rev: str) -> str:
        result = self._git(project, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if result.returncode != 0:
            raise ProjectSourceError(f"project {project}: no commit {rev!r} in the head's mirror")
        return result.stdout.decode().strip()

    def read_file(self, project: str, commit: str, relpath: str) -> str | None:
        """A file's text at ``commit`` (None if absent): how the head reads a URL project's files."""
        result = self._git(project, "show", f"{commit}:{relpath}")
        return result.stdout.decode() if result.returncode == 0 else None

    def has(self, project: str, commit: str) -> bool:
        return self._git(project, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0

    # to and from nodes --------------------------------------------------------------------------
    def bundle(self, project: str, commit: str, have: list[str]) -> bytes:
        """A bundle carrying ``commit`` as ``refs/hearth/fetch/<commit>``, without the history a node
        already has (``have``: commits in its cache; ones the mirror does not know are ignored)."""
        with self._lock(project):
            if not self.has(project, commit):
                raise TransferError(f"project {project}: the head has no commit {commit}")
            ref = f"refs/hearth/fetch/{commit}"
            self._git(project, "update-ref", ref, commit)
            known = [f"^{c}" for c in have if c != commit and self.has(project, c)]
            with tempfile.TemporaryDirectory(prefix="hearth-bundle-") as tmp:
                path = Path(tmp) / "out.bundle"
                result = self._git(project, "bundle", "create", "-q", str(path), ref, *known)
                if result.returncode != 0:
                    if "empty bundle" in _err(result):  # the node has it all already
                        return b""
                    raise TransferError(f"project {project}: cannot bundle {commit}: {_err(result)}")
                return path.read_bytes()

    def receive(self, project: str, task_id: str, attempt: str, commit: str, bundle: bytes) -> None:
        """Take a checkpoint: verify ``bundle`` (empty: the head has ``commit`` already), keep it as
        the ref of ``attempt`` (``attempt_key``) and move the task branch there. Raises TransferError."""
        attempt_ref = attempt_ref_name(task_id, attempt)
        if not COMMIT_ID.fullmatch(commit):  # it goes into update-ref's stdin: an object id, nothing else
            raise TransferError(f"project {project}: {commit[:80]!r} from {task_id} is not a commit id")
        if not commit.strip("0"):  # the null id would make update-ref delete the refs
            raise TransferError(f"project {project}: checkpoint {commit[:12]} of {task_id} never arrived")
        with self._lock(project):
            if bundle:
                with tempfile.TemporaryDirectory(prefix="hearth-bundle-") as tmp:
                    path = Path(tmp) / "in.bundle"
                    path.write_bytes(bundle)
                    # No separate `bundle verify`: fetching from a bundle checks its prerequisites
                    # and the connectivity of what it brings (one git process less per checkpoint).
                    fetched = self._git(project, "fetch", "--quiet", "--no-write-fetch-head", str(path),
                                        f"+refs/heads/hearth/{task_id}:{attempt_ref}")
                    if fetched.returncode != 0:
                        raise TransferError(f"project {project}: checkpoint {commit[:12]} of {task_id} does "
                                            f"not verify against the head's mirror: {_err(fetched)}")
            # Both refs in one transaction; update-ref refuses an object the mirror lacks (or a
            # non-commit on a branch), so a checkpoint that never arrived moves nothing.
            moves = f"update {attempt_ref} {commit}\nupdate refs/heads/hearth/{task_id} {commit}\n"
            updated = self._git(project, "update-ref", "--stdin", stdin=moves.encode())
            if updated.returncode != 0:
                if not self.has(project, commit):
                    raise TransferError(f"project {project}: checkpoint {commit[:12]} of {task_id} never arrived")
                raise TransferError(f"project {project}: cannot record {attempt_ref}: {_err(updated)}")

    def publish(self, project: str, source: str, task_id: str) -> None:
        """Push the task branch and every attempt ref of the task to the project's source (forced:
        a restarted attempt rewrites the branch, and the attempt refs keep what it replaced).

        Publishes that wait share one push: it carries every task asked for before it began (a push
        to a local source cost a loaded head ~80 ms, most of it starting git twice; four slots
        checkpointing at once now pay it about once). It runs beside ``receive`` (another lock): git
        reads refs while another process moves other refs safely."""
        key = (project, source)
        with self._guard:
            self._to_publish.setdefault(key, set()).add(task_id)
        with self._push_lock(project):
            with self._guard:
                batch = self._to_publish.pop(key, set()) if task_id in self._to_publish.get(key, ()) else set()
            if batch:
                self._push(project, source, batch)
            with self._guard:
                problem = self._published.pop((project, task_id), None)
        if problem is not None:
            raise problem

    def _push(self, project: str, source: str, tasks: set[str]) -> None:
        """One push of ``tasks``' refs; what went wrong for each is kept for its ``publish`` to raise."""
        refs = [ref for task in sorted(tasks)
                for ref in (f"refs/heads/hearth/{task}", f"refs/hearth/attempts/{task}/*")]
        # A pattern refspec pushes every attempt ref without listing them first (one git less).
        result = self._git(project, "push", "--quiet", "--porcelain", source, *[f"+{r}:{r}" for r in refs])
        problems: dict[str, PublishError] = {}
        if result.returncode != 0:
            refused: dict[str, list[str]] = {}
            for line in result.stdout.decode(errors="replace").splitlines():
                if line.startswith("!"):  # porcelain: "!<tab>from:to<tab>[rejected] (why)"
                    _, refspec, why = [*line.split("\t"), "", ""][:3]
                    refused.setdefault(_task_of(refspec.rpartition(":")[2]), []).append(why)
            if len(tasks) > 1 and refused:
                # A pre-receive hook declines the whole push: alone, each refused task gets its own answer.
                for task in refused:
                    self._push(project, source, {task})
                tasks = tasks - set(refused)
                refused = {}
            said = [line for line in result.stderr.decode(errors="replace").splitlines()
                    if line.startswith("remote:") and line.strip() != "remote:"]
            for task in tasks:
                if task in refused:
                    problems[task] = PublishError(f"{source} rejected the push of hearth/{task}: "
                                                  + " / ".join([*refused[task][:2], *said[-3:]]), rejected=True)
                elif not refused:  # nothing refused by name: the push itself failed, for all of them
                    problems[task] = PublishError(f"cannot push hearth/{task} to {source}: {_err(result)}",
                                                  rejected=False)
        with self._guard:
            self._published.update({(project, task): problem for task, problem in problems.items()})

    def attempt_refs(self, project: str, task_id: str) -> dict[str, str]:
        """``refs/hearth/attempts/<task>/<key>`` → commit, for every attempt that sent a checkpoint."""
        listed = self._git(project, "for-each-ref", "--format=%(refname) %(objectname)",
                           f"refs/hearth/attempts/{task_id}/")
        return dict(line.split() for line in listed.stdout.decode().splitlines() if line)


def _task_of(ref: str) -> str:
    """``refs/heads/hearth/T-3`` or ``refs/hearth/attempts/T-3/2-ab12cd`` → ``T-3``."""
    parts = ref.split("/")
    return parts[3] if ref.startswith("refs/hearth/attempts/") else parts[-1]


def attempt_key(attempt_id: str) -> str:
    """``T-3.2-ab12cd`` → ``2-ab12cd``: the attempt's number and the random part of its id."""
    return attempt_id.split(".", 1)[-1]


def attempt_ref_name(task_id: str, attempt: str) -> str:
    return f"refs/hearth/attempts/{task_id}/{attempt}"
