"""docs/security.md names the test that proves each line: those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_security_doc_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py")}
    every = "\n".join(sources.values())
    named = re.findall(r"`(?:tests/(\w+\.py)(?:::(\w+))?|((?:test|check)_\w+))", text)
    assert len(named) >= 15
    for file, qualified, bare in named:
        if file:
            assert file in sources, f"docs/security.md names a missing file tests/{file}"
            if qualified:
                assert f"def {qualified}(" in sources[file], f"tests/{file} has no {qualified}"
        else:
            assert f"def {bare}(" in every, f"no test named {bare}"
