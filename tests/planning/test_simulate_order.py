"""The simulator is given vLLM's set order: the stand-in set iterates exactly like a set of name-hashed objects in a
process with the engine's PYTHONHASHSEED (checked in such a process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tenantserve.planning.replay import hash_order, set_order

PROBE = """
import json, sys
class R:
    def __init__(s, n): s.n = n
    def __hash__(s): return hash(s.n)
    def __eq__(s, o): return s.n == o.n
print(json.dumps([[r.n for r in set(R(n) for n in names)] for names in json.loads(sys.argv[1])]))
"""


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_stand_in_set_iterates_like_the_engines(seed: str) -> None:
    names = [f"sim{i:02d}" for i in range(10)] + ["flush0", "flush1"]
    batches = [names[i:i + k] for k in (2, 3, 5, 9) for i in range(0, len(names) - k + 1, 2)]
    batches += [list(reversed(b)) for b in batches]
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(batches)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
    expected = json.loads(out)
    order = set_order(hash_order(names, seed))
    assert [order(b) for b in batches] == expected
    assert len({tuple(o) for o in expected}) > 1  # the seed does order them (not a trivial pass)
