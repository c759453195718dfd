"""Token rights checked before the scheduler is asked anything (no Ray: the route refuses first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cluster.api import create_app
from cluster.api.auth import PLUGIN_RIGHTS, RIGHTS
from cluster.store import Store


class UnreachableScheduler:
    """Where the scheduler client goes: a refused submit must never get this far."""

    asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.asked.append(name)
        raise AssertionError(f"a refused submit reached the scheduler ({name})")


def test_the_plugin_token_cannot_name_a_model_by_url(tmp_path: Path) -> None:
    scheduler = UnreachableScheduler()
    Store(tmp_path / "hearth.db").close()  # the sidecar reads an existing store
    app = create_app(scheduler, tmp_path / "hearth.db", "admin-token", plugin_token="plugin-token")  # type: ignore[arg-type]
    with TestClient(app) as client:
        reply = client.post("/v1/tasks", headers={"Authorization": "Bearer plugin-token"},
                            json={"project_path": str(tmp_path), "prd_path": "tasks/prd.json",
                                  "model": "openai:http://attacker.example:8000/v1#m"})
    assert reply.status_code == 403, reply.text
    assert "'endpoint'" in reply.json()["detail"] and "catalogue" in reply.json()["detail"]
    assert scheduler.asked == []
    assert "endpoint" in RIGHTS and "endpoint" not in PLUGIN_RIGHTS
