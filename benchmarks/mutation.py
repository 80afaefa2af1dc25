"""Mutation testing of the training signal: does the test suite fail when a derivation is wrong?

    python benchmarks/mutation.py                  # every mutant in benchmarks/mutants.py, the whole suite each
    python benchmarks/mutation.py --only kl,clip   # the mutants whose name contains "kl" or "clip"
    python benchmarks/mutation.py --list           # the mutants, without running anything

Each mutant is one small plausible edit (a sign, a bound, a mask offset, a normaliser) on the path from a sampled
token to a gradient. For each one, a temporary copy of the repository gets that edit alone, and the test suite
runs in it with ``-x``; the mutant is killed when a test fails (or the suite errors or times out). Test files that
name the mutated module run first, so that a killed mutant usually stops within seconds; a surviving one costs
a whole suite run. Equivalent mutants (edits no test can tell apart, explained in their entry) are listed and
not counted. A developer's tool, not part of CI: it prints a table and the kill rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def repository_copy(dest: Path) -> Path:
    """The files git tracks, and the untracked ones it does not ignore, copied under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def check_applies(mutant: Mutant) -> None:
    """Each mutant's old text must occur exactly once in its file: a stale entry is an error, not a survivor."""
    text = (ROOT / mutant.file).read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"error: mutant {mutant.name!r}: its old text occurs {count} times in {mutant.file} "
                         f"(must be exactly once); update benchmarks/mutants.py")
    if mutant.old == mutant.new:
        raise SystemExit(f"error: mutant {mutant.name!r} changes nothing")


SLOW_TESTS = ("test_train_grpo.py", "test_train_ppr.py")  # whole trainer runs and 4-process runs: last


def test_order(copy: Path, mutated: str | None) -> list[str]:
    """Every test file, those that name the mutated module first (the fast ones first, then by size): the whole
    suite, in an order that kills fast."""
    files = sorted((copy / "tests").glob("test_*.py"), key=lambda f: (f.name in SLOW_TESTS, f.stat().st_size))
    first = [f for f in files if mutated and Path(mutated).stem in f.read_text()]
    return [str(f.relative_to(copy)) for f in first + [f for f in files if f not in first]]


def run_suite(copy: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'timeout', the first failing test, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if run.returncode == 0:
        return "passed", "", seconds
    failing = [line.split()[1] for line in run.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return "failed", failing[0] if failing else f"exit {run.returncode}", seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated texts: run the mutants whose name contains one")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per suite run (a timeout kills)")
    args = parser.parse_args(argv)
    for mutant in MUTANTS:
        check_applies(mutant)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("error: two mutants share a name")
    chosen = [m for m in MUTANTS if any(text in m.name for text in args.only.split(","))]
    live, equivalent = [m for m in chosen if not m.equivalent], [m for m in chosen if m.equivalent]
    if args.list:
        for m in chosen:
            print(f"{m.name:<34}{m.file:<24}{m.why}" + (f"  [equivalent: {m.equivalent}]" if m.equivalent else ""))
        return 0

    with tempfile.TemporaryDirectory(prefix="agenticrec-mutation-") as tmp:
        copy = repository_copy(Path(tmp))
        status, failing, seconds = run_suite(copy, test_order(copy, None), args.timeout)
        if status != "passed":
            raise SystemExit(f"error: the unmutated suite does not pass ({status}: {failing}); fix it first")
        print(f"unmutated suite: passed in {seconds:.0f} s; {len(live)} mutants to run, {len(equivalent)} "
              f"equivalent (not run)\n", flush=True)
        print(f"{'mutant':<34}{'file':<24}{'result':<10}{'s':>5}  first failing test", flush=True)
        killed, survivors = 0, []
        for mutant in live:
            target = copy / mutant.file
            original = target.read_text()
            target.write_text(original.replace(mutant.old, mutant.new))
            try:
                status, failing, seconds = run_suite(copy, test_order(copy, mutant.file), args.timeout)
            finally:
                target.write_text(original)
            result = "SURVIVED" if status == "passed" else "killed"
            killed += status != "passed"
            if status == "passed":
                survivors.append(mutant)
            print(f"{mutant.name:<34}{mutant.file:<24}{result:<10}{seconds:>5.0f}  "
                  f"{failing if status == 'failed' else status if status == 'timeout' else ''}", flush=True)

    print(f"\nkill rate: {killed} / {len(live)} = {100 * killed / max(1, len(live)):.1f} % of the non-equivalent "
          f"mutants")
    for m in survivors:
        print(f"  survived: {m.name} ({m.file}): {m.why}")
    for m in equivalent:
        print(f"  equivalent, not counted: {m.name} ({m.file}): {m.equivalent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
