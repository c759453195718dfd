"""Acceptance check for the greeting demo: `python3 check.py` (Hearth sets $HEARTH_STEP).

Each story's files must exist and contain their word (any case). Stories already done must stay done.
"""

import os
import sys
from pathlib import Path

WANTED = {"US-001": ("hello.txt", "hello"), "US-002": ("goodbye.txt", "goodbye")}
ORDER = list(WANTED)


def main() -> int:
    step = os.environ.get("HEARTH_STEP", ORDER[-1])
    upto = ORDER[: ORDER.index(step) + 1] if step in WANTED else ORDER
    problems = []
    for story in upto:
        name, word = WANTED[story]
        path = Path(name)
        if not path.is_file():
            problems.append(f"{story}: {name} does not exist")
        elif word not in path.read_text(errors="replace").lower():
            problems.append(f"{story}: {name} does not contain the word {word!r}")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {', '.join(upto)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
