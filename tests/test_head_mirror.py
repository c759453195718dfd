"""The head's mirror of a project (cluster/repos.py): what a node names is checked before git sees it, and
shared fetches never miss a commit."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import git
import pytest

from agent.processes import wait_until
from agent.transport import TransferError
from cluster.project_code import ProjectCode, PublishError


def test_a_checkpoint_named_by_anything_but_a_commit_id_is_refused(greeting_project: Path) -> None:
    code = ProjectCode(greeting_project.parent / "head-state")
    opened = code.open(str(greeting_project))
    project = opened.config.name
    head = git.Repo(greeting_project).head.commit.hexsha
    mirror = git.Repo(code.repos.mirror(project))
    before = {ref.path: ref.commit.hexsha for ref in mirror.refs}
    # A node that writes an update-ref command where the commit id goes must not move any ref.
    sneaky = f"{head}\ndelete refs/source/HEAD"
    with pytest.raises(TransferError, match="is not a commit id"):
        code.take_checkpoint(project, "T-1.1-abc123", sneaky, b"")
    assert {ref.path: ref.commit.hexsha for ref in mirror.refs} == before
    # The commit the head already has is taken (an empty bundle: nothing new to carry).
    code.take_checkpoint(project, "T-1.1-abc123", head, b"")
    assert mirror.commit("refs/heads/hearth/T-1").hexsha == head
    for missing in ("0" * 40, "1" * 40):  # the null id (update-ref's "delete"), one nobody sent
        with pytest.raises(TransferError, match="never arrived"):
            code.take_checkpoint(project, "T-1.1-abc123", missing, b"")
        assert mirror.commit("refs/heads/hearth/T-1").hexsha == head


def test_a_commit_made_before_a_refresh_is_always_seen_even_with_refreshes_in_flight(greeting_project: Path) -> None:
    """Refreshes that wait for one fetch share it; a commit made before a refresh was asked is never missed."""
    repos = ProjectCode(greeting_project.parent / "head-state").repos
    source = git.Repo(greeting_project)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for round_no in range(3):
            (greeting_project / f"round-{round_no}.txt").write_text(str(round_no))
            source.git.add("-A")
            source.git.commit("-qm", f"round {round_no}", author="t <t@t>")
            made = source.head.commit.hexsha
            heads = set(pool.map(lambda _: repos.refresh("greeting", str(greeting_project)), range(8)))
            assert heads == {made}


def test_publishes_sharing_a_push_each_get_their_own_outcome(greeting_project: Path) -> None:
    """Checkpoints of several tasks published at once (one push may carry them all): every branch
    lands in the source, and a ref the source refuses fails only its own task, with the reason."""
    hook = greeting_project / ".git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do case \"$ref\" in refs/heads/hearth/T-3)\n"
                    "  echo 'T-3 is protected here' >&2; exit 1;; esac; done\n")
    hook.chmod(0o755)
    code = ProjectCode(greeting_project.parent / "head-state")
    project = code.open(str(greeting_project)).config.name
    head = git.Repo(greeting_project).head.commit.hexsha
    tasks = [f"T-{n}" for n in range(1, 7)]
    for task in tasks:
        code.take_checkpoint(project, f"{task}.1-abc123", head, b"")

    def publish(task: str) -> str:
        try:
            code.publish(project, str(greeting_project), task)
        except PublishError as exc:
            return f"{'rejected' if exc.rejected else 'failed'}: {exc}"
        return "ok"

    # While a push is under way every publish waits; the next push then carries all six.
    repos = code.repos
    with concurrent.futures.ThreadPoolExecutor(len(tasks)) as pool:
        with repos._push_lock(project):
            pending = [pool.submit(publish, task) for task in tasks]
            assert wait_until(lambda: len(repos._to_publish.get((project, str(greeting_project)), ())) == 6, 30)
        outcomes = dict(zip(tasks, [future.result() for future in pending], strict=True))
    # A pre-receive hook declines the whole push it is in: the tasks that shared it are pushed again
    # alone, so only T-3 is refused, with its reason.
    assert outcomes["T-3"].startswith("rejected") and "protected" in outcomes["T-3"]
    others = [task for task in tasks if task != "T-3"]
    assert {task: outcomes[task] for task in others} == dict.fromkeys(others, "ok")
    source = git.Repo(greeting_project)
    assert [source.commit(f"refs/heads/hearth/{task}").hexsha for task in others] == [head] * 5
    # The next submission's refresh does not copy those branches back into the mirror as source refs.
    code.repos.refresh(project, str(greeting_project))
    mirrored = git.Repo(code.repos.mirror(project)).git.for_each_ref("--format=%(refname)", "refs/source/")
    assert "refs/source/heads/main" in mirrored.split() and "hearth" not in mirrored
