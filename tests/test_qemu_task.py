"""A task configured with ``sandbox = "qemu"`` runs the demo PRD inside a micro-VM; Reject rolls the
VM and the branch back to the previous checkpoint (scripted model, named so: the VM is the subject)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import git
import pytest
from tests_support import RecordingController, code_for, spec_for

from agent.events import CheckpointReady, TerminationReason
from agent.models.scripted import scripted_model
from agent.project import task_branch
from agent.runner import Decision

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module", autouse=True)
def guest_image() -> None:
    from agent.sandbox.image import ImageBuildError, build_guest_image

    try:
        build_guest_image()
    except ImageBuildError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to build the guest image: {exc}")
        pytest.skip(f"cannot build the qemu guest image here: {exc}")


def test_demo_prd_runs_inside_the_vm_and_reject_rolls_back(greeting_project: Path) -> None:
    host_kernel = os.uname().release
    # The check proves where it runs: the guest boots Debian's kernel, not the host's.
    check = f'python3 check.py && test "$(uname -r)" != "{host_kernel}"'
    spec = spec_for(greeting_project, sandbox="qemu", approval="each-step", check=check)
    controller = RecordingController(decisions=[
        Decision(approve=False, reason="needs another look", who="carol"),
        Decision(approve=True), Decision(approve=True)])
    from agent.runner import TaskRunner

    result = TaskRunner(spec, attempt_id="T-7.1-qemu00", attempt_no=1, controller=controller,
                        model=scripted_model("demo"), workdir=greeting_project / ".hearth/work/T-7",
                        code=code_for(spec)).run()
    assert result.reason == TerminationReason.completed, result.message
    checkpoints = [e for e in controller.events if isinstance(e, CheckpointReady)]
    assert [c.step_id for c in checkpoints] == ["US-001", "US-001", "US-002"]
    repo = git.Repo(greeting_project)
    subjects = [c.summary for c in repo.iter_commits(f"{spec.base_commit}..{task_branch('T-7')}")]
    assert subjects == ["US-002: Create goodbye file", "US-001: Create hello file"]  # the rejected one is gone
    stories = json.loads(repo.git.show(f"{task_branch('T-7')}:tasks/prd.json"))["userStories"]
    assert [s["passes"] for s in stories] == [True, True]
