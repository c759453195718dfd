"""Token rights checked before the scheduler is asked anything (no Ray: the route refuses first)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from cluster.api import PLUGIN_RIGHTS, RIGHTS, create_app


def test_the_plugin_token_cannot_name_a_model_by_url(tmp_path: Path) -> None:
    asked: list[str] = []

    def scheduler() -> None:
        asked.append("scheduler")
        raise AssertionError("a refused submit must not reach the scheduler")

    app = create_app(scheduler, tmp_path / "hearth.db", "admin-token", plugin_token="plugin-token")
    with TestClient(app) as client:
        reply = client.post("/v1/tasks", headers={"Authorization": "Bearer plugin-token"},
                            json={"project_path": str(tmp_path), "prd_path": "tasks/prd.json",
                                  "model": "openai:http://attacker.example:8000/v1#m"})
    assert reply.status_code == 403, reply.text
    assert "'endpoint'" in reply.json()["detail"] and "catalogue" in reply.json()["detail"]
    assert asked == []
    assert "endpoint" in RIGHTS and "endpoint" not in PLUGIN_RIGHTS
