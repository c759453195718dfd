#!/usr/bin/env python3
"""Build the greeting.* beads fixtures from greeting.bd-calls.jsonl (what ralph-tui really ran).

The field names and shapes follow bd's source (internal/types/types.go: Issue, Dependency,
IssueWithCounts, IssueDetails), because bd itself cannot run here. Timestamps are fixed so the
output is reproducible: `python tests/data/prd/make_beads_fixtures.py` rewrites the same bytes.
"""

import copy
import json
from pathlib import Path

HERE = Path(__file__).parent
T0 = "2026-11-25T10:20:00Z"
TYPES = {"epic": "epic", "task": "task"}


def build() -> dict[str, dict]:
    issues: dict[str, dict] = {}
    epic_id = "gr-7kq"
    for call in map(json.loads, (HERE / "greeting.bd-calls.jsonl").read_text().splitlines()):
        if call[:1] == ["create"]:
            opt = dict(zip(call[1::2], call[2::2], strict=False))
            parent = opt.get("--parent")
            number = sum(1 for i in issues.values() if i.get("parent") == parent) + 1
            issue_id = f"{parent}.{number}" if parent else epic_id
            issue = {
                "id": issue_id,
                "title": opt["--title"],
                "description": opt["--description"],
                "status": "open",
                "priority": int(opt["--priority"]),
                "issue_type": TYPES[opt["--type"]],
                "created_at": T0,
                "created_by": "ralph-tui",
                "updated_at": T0,
            }
            if "--external-ref" in opt:
                issue["external_ref"] = opt["--external-ref"]
            issue["labels"] = opt["--labels"].split(",")
            if parent:
                issue["dependencies"] = [
                    {
                        "issue_id": issue_id,
                        "depends_on_id": parent,
                        "type": "parent-child",
                        "created_at": T0,
                        "created_by": "ralph-tui",
                    }
                ]
                issue["parent"] = parent
            issues[issue_id] = issue
        elif call[:2] == ["dep", "add"]:
            child, blocker = call[2], call[3]
            issues[child]["dependencies"].append(
                {
                    "issue_id": child,
                    "depends_on_id": blocker,
                    "type": "blocks",
                    "created_at": T0,
                    "created_by": "ralph-tui",
                }
            )
    for issue in issues.values():
        deps = issue.get("dependencies", [])
        issue["dependency_count"] = len(deps)
        issue["dependent_count"] = sum(
            d["depends_on_id"] == issue["id"] for i in issues.values() for d in i.get("dependencies", [])
        )
        issue["comment_count"] = 0
    return issues


def main() -> None:
    fresh = build()
    # bd list --json --all --limit 0 (legacy output: a bare array)
    (HERE / "greeting.bd-list.json").write_text(json.dumps(list(fresh.values()), indent=2) + "\n")
    # BD_JSON_ENVELOPE=1 bd ready --json: open and unblocked only (the epic too; bd does not hide epics)
    ready = [i for i in fresh.values() if i["id"] != "gr-7kq.2"]
    (HERE / "greeting.bd-ready.envelope.json").write_text(
        json.dumps({"schema_version": 1, "data": ready}, indent=2) + "\n"
    )
    # bd show gr-7kq.2 --json: an array of IssueDetails; dependencies are issue objects + dependency_type
    shown = copy.deepcopy(fresh["gr-7kq.2"])
    shown["dependencies"] = [
        {**{k: v for k, v in fresh["gr-7kq.1"].items() if k != "dependencies"}, "dependency_type": "blocks"},
        {**{k: v for k, v in fresh["gr-7kq"].items()}, "dependency_type": "parent-child"},
    ]
    shown["dependents"] = []
    (HERE / "greeting.bd-show.json").write_text(json.dumps([shown], indent=2) + "\n")
    # .beads/issues.jsonl export after US-001 was closed by the loop, with a memory line
    done = copy.deepcopy(fresh)
    done["gr-7kq.1"].update(
        status="closed",
        closed_at="2026-11-25T10:25:00Z",
        close_reason="Completed by agent",
        updated_at="2026-11-25T10:25:00Z",
    )
    lines = [json.dumps({"_type": "issue", **issue}, separators=(",", ":")) for issue in done.values()]
    lines.append(
        json.dumps(
            {"_type": "memory", "key": "style", "value": "prefer small commits"}, separators=(",", ":")
        )
    )
    (HERE / "greeting.beads.issues.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
