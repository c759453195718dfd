"""The head's mirror of a project (cluster/repos.py): what a node names is checked before git sees it, and
shared fetches never miss a commit."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import git
import pytest

from agent.transport import TransferError
from cluster.project_code import ProjectCode


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
