"""The head taking a node's checkpoint (cluster/repos.py): what a node names is checked before git sees it."""

from __future__ import annotations

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
