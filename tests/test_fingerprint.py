"""The refactored engine reproduces a seeded digits search recorded before the refactor."""

import json
from pathlib import Path

import nat

RECORD = Path(__file__).parent / "data" / "fingerprint.json"


def test_seeded_search_reproduces_the_recorded_archive():
    record = json.loads(RECORD.read_text())
    result = nat.search(**record["settings"])
    got = [(list(map(int, e.x)), e.source) for e in result.archive.entries]
    want = [(e["x"], e["source"]) for e in record["entries"]]
    assert got == want
    accuracies = [e.accuracy for e in result.archive.entries]
    assert accuracies == [e["accuracy"] for e in record["entries"]]
