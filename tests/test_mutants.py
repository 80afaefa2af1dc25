"""benchmarks/mutants.py stays applicable: each mutant's edit names text that occurs exactly once in its file, so
that benchmarks/mutation.py edits what the mutant says (a stale entry would otherwise surface only when the harness
is run)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from mutants import MUTANTS  # noqa: E402


def test_every_mutant_edits_text_found_exactly_once_in_its_file():
    counts = {m.name: (ROOT / m.file).read_text().count(m.old) for m in MUTANTS}
    assert {name: n for name, n in counts.items() if n != 1} == {}
    assert all(m.old != m.new for m in MUTANTS)
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
