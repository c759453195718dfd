"""PRDs written back the way their own tools write them: real git, real bwrap, scripted models.

The beads PRD is a copy of a real ``.beads/issues.jsonl`` (steveyegge/beads at d6b839b1dc41), and
the close is compared with the line a real ``bd close`` left in the next commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import git
import pytest
from tests_support import RecordingController, runner_for

from agent.events import CheckpointReady, TerminationReason
from agent.prd import PrdError, load_prd
from agent.project import init_project, open_project, task_branch
from agent.runner import TaskSpec
from agent.writeback import bd_timestamp, close_bead, close_bead_line, go_json, markdown_to_prd_json
from cluster.submission import uncommitted_prd

DATA = Path(__file__).parent / "data" / "prd"
REAL_EXPORT = DATA / "beads-repo.issues.d6b839b.jsonl"
REAL_CLOSE = DATA / "beads-repo.bd-close.d968f79.jsonl"
CLOSE_KEYS = {"status", "updated_at", "closed_at", "close_reason"}


def make_project(root: Path, files: dict[str, bytes], **config: object) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "project"], cwd=root, check=True, env={**env, "PATH": "/usr/bin:/bin"})
    init_project(root, config=dict(config))
    return root


def run_task(project: Path, prd_relpath: str, *, prd_seed: str | None = None) -> tuple[TaskSpec, RecordingController]:
    opened = open_project(project)
    spec = TaskSpec(task_id="T-7", project_path=str(project), plan=load_prd(project / prd_relpath),
                    prd_relpath=prd_relpath, prd_seed=prd_seed, model="scripted:demo",
                    base_commit=opened.head_commit(), config=opened.config)
    controller = RecordingController()
    result = runner_for(spec, controller).run()
    assert result.reason == TerminationReason.completed, result.message
    return spec, controller


def test_a_closed_line_is_byte_for_byte_what_bd_close_wrote() -> None:
    real = REAL_CLOSE.read_text(encoding="utf-8").rstrip("\n")
    before = next(line for line in REAL_EXPORT.read_text(encoding="utf-8").splitlines() if '"bd-3q6.4"' in line)
    record = json.loads(real)
    assert close_bead_line(before, record["close_reason"], record["closed_at"]) == real


def test_bd_times_and_json_bytes_follow_go() -> None:
    import datetime as dt

    moment = dt.datetime(2026, 1, 22, 18, 0, 13, 327700, tzinfo=dt.UTC)
    assert bd_timestamp(moment) == "2026-01-22T18:00:13.3277Z"
    assert bd_timestamp(moment.replace(microsecond=0)) == "2026-01-22T18:00:13Z"
    assert go_json({"t": "a & b <c> ü"}) == '{"t":"a \\u0026 b \\u003cc\\u003e ü"}'


def test_closing_an_unknown_or_closed_issue(tmp_path: Path) -> None:
    export = tmp_path / "issues.jsonl"
    shutil.copy(REAL_EXPORT, export)
    with pytest.raises(PrdError, match="no issue 'bd-nope' to close"):
        close_bead(export, "bd-nope", "done")
    assert close_bead(export, "bd-3q6.1", "done") is False  # closed already: the file is not rewritten
    assert export.read_bytes() == REAL_EXPORT.read_bytes()


def test_a_beads_prd_from_a_real_export_ends_with_exactly_its_steps_closed(tmp_path: Path) -> None:
    original = REAL_EXPORT.read_bytes()
    project = make_project(tmp_path / "beads", {".beads/issues.jsonl": original})
    spec, _ = run_task(project, ".beads/issues.jsonl")
    steps = {s.id for s in spec.plan.steps}
    assert len(steps) == 10
    after = git.Repo(project).git.show(f"{task_branch('T-7')}:.beads/issues.jsonl", strip_newline_in_stdout=False)
    old_lines, new_lines = original.decode().split("\n"), after.split("\n")
    assert len(old_lines) == len(new_lines) and new_lines[-1] == ""
    for old, new in zip(old_lines, new_lines, strict=True):
        if not old:
            continue
        before = json.loads(old)
        if before["id"] not in steps:
            assert new == old  # byte-identical
            continue
        closed = json.loads(new)
        assert closed["status"] == "closed" and closed["closed_at"] == closed["updated_at"]
        assert closed["close_reason"].startswith("Completed by Hearth")
        assert {k: v for k, v in closed.items() if k not in CLOSE_KEYS} == \
               {k: v for k, v in before.items() if k not in CLOSE_KEYS}
        # bd's field order: closed_at and close_reason right after updated_at
        keys = list(closed)
        assert keys[keys.index("updated_at") + 1:keys.index("updated_at") + 3] == ["closed_at", "close_reason"]
    assert load_prd(project / ".beads/issues.jsonl").steps  # the user's checkout is untouched


def test_a_markdown_prd_gets_its_converted_prd_json_written_back(tmp_path: Path) -> None:
    markdown = (DATA / "prd-greeting.md").read_bytes()
    project = make_project(tmp_path / "md", {"tasks/prd-greeting.md": markdown, "check.py": b""})
    # Two of the three stories: the third's criteria are not files the scripted model can write.
    text = markdown.decode().split("### US-003")[0]
    (project / "tasks/prd-greeting.md").write_text(text)
    with git.Repo(project) as repo:
        repo.git.commit("-am", "two stories", author="t <t@t>")
        run_task(project, "tasks/prd-greeting.md")
        branch = task_branch("T-7")
        converted = json.loads(repo.git.show(f"{branch}:tasks/prd.json"))
        assert converted["metadata"]["sourcePrd"] == "prd-greeting.md"
        assert [(s["id"], s["passes"]) for s in converted["userStories"]] == [("US-001", True), ("US-002", True)]
        assert repo.git.show(f"{branch}:tasks/prd-greeting.md", strip_newline_in_stdout=False) == text


def test_the_converter_matches_ralph_tui_convert_output() -> None:
    for name in ("greeting", "notes-app"):
        real = (DATA / f"prd-{name}.json").read_text(encoding="utf-8")
        document = json.loads(real)
        plan = load_prd(DATA / f"prd-{name}.md").model_copy(update={"branch_name": document["branchName"]})
        assert markdown_to_prd_json(DATA / f"prd-{name}.md", plan, document["metadata"]["createdAt"]) == real


def test_an_uncommitted_prd_json_is_committed_on_the_task_branch_first(greeting_project: Path) -> None:
    prd = greeting_project / "tasks" / "prd.json"
    document = json.loads(prd.read_text())
    document["userStories"][0]["title"] = "Create the hello file (edited, not committed)"
    prd.write_text(json.dumps(document, indent=2))
    seed = uncommitted_prd(greeting_project, "tasks/prd.json")
    assert seed == prd.read_text()
    assert uncommitted_prd(greeting_project, "check.py") is None  # committed as it is on disk
    run_task(greeting_project, "tasks/prd.json", prd_seed=seed)
    with git.Repo(greeting_project) as repo:
        subjects = [c.summary for c in repo.iter_commits(task_branch("T-7"))][:3][::-1]
        stories = json.loads(repo.git.show(f"{task_branch('T-7')}:tasks/prd.json"))["userStories"]
    assert subjects == ["hearth: add tasks/prd.json as submitted",
                        "US-001: Create the hello file (edited, not committed)", "US-002: Create goodbye file"]
    assert stories[0]["title"].endswith("(edited, not committed)") and all(s["passes"] for s in stories)


def test_checkpoint_cards_carry_the_diff(greeting_project: Path) -> None:
    _, controller = run_task(greeting_project, "tasks/prd.json")
    cards = [e for e in controller.events if isinstance(e, CheckpointReady)]
    assert "+hello" in cards[0].diff and not cards[0].diff_truncated
    assert [c.final for c in cards] == [False, True]


def test_the_chat_card_of_a_final_checkpoint_shows_diff_build_artifacts_and_finish_buttons() -> None:
    from agent.artifacts import ArtifactRef
    from cluster.chat_cards import render

    dist = ArtifactRef(name="dist", kind="directory", sha256="ab" * 32, size=10240, path="dist")
    image = ArtifactRef(name="image", kind="image", sha256="0" * 64, size=0, image_id="sha256:" + "e" * 64,
                        image_tag="shop:T-3-US-001", stored=False)
    event = CheckpointReady(task_id="T-3", seq=9, step_id="US-001", commit="c" * 40, snapshot_id="s",
                            diff_stat=" hello.txt | 1 +", files_changed=["hello.txt"], check_summary="ok",
                            needs_approval=True, diff="+hello from hearth\n" * 200, diff_truncated=True,
                            build_summary="make: done", artifacts=[dist, image], final=True)
    card = render(event)
    assert "+hello from hearth" in card.text and "Whole diff: hearth diff T-3 US-001" in card.text
    assert "Build: make: done" in card.text and "Artifact: dist (10240 bytes) sha256 abababababab" in card.text
    assert "Artifact: image shop:T-3-US-001" in card.text and "hearth artifacts T-3 --out DIR" in card.text
    assert [label for label, _ in card.buttons] == ["Approve", "Approve & merge", "Approve & push", "Reject"]
    assert ("Approve & merge", "hearth:merge:T-3:9") in card.buttons
    plain = render(event.model_copy(update={"final": False, "artifacts": [], "diff": "", "build_summary": ""}))
    assert [label for label, _ in plain.buttons] == ["Approve", "Reject"] and "Artifact" not in plain.text
