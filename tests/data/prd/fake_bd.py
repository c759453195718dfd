#!/usr/bin/env python3
"""A stand-in `bd` that only records its argv (the real bd cannot be installed here).

Used once to capture what `ralph-tui convert --to beads` runs; see README.md. It answers
`--version`, prints hierarchical ids for `create` (epic gr-7kq, children gr-7kq.N) and
succeeds on everything else.
"""

import json
import os
import sys

log = os.environ["FAKE_BD_LOG"]
args = sys.argv[1:]
with open(log, encoding="utf-8") if os.path.exists(log) else open(os.devnull) as fh:
    calls = [json.loads(line) for line in fh]
with open(log, "a", encoding="utf-8") as fh:
    fh.write(json.dumps(args) + "\n")
if args[:1] == ["--version"]:
    print("bd version 1.3.0 (fake recorder)")
elif args[:1] == ["create"]:
    if "--parent" in args:
        parent = args[args.index("--parent") + 1]
        siblings = [c for c in calls if c[:1] == ["create"] and "--parent" in c and parent in c]
        print(f"{parent}.{len(siblings) + 1}")
    else:
        print("gr-7kq")
