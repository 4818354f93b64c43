"""Keep a run as the repository's reference: the compact part of its directory, under
``results/reference/<scenario>-<run-id>/``.

    python -m scenarios.analysis.reference results/default/<run-id>      (or: make reference RUN=...)

Kept: the records (``record.json``, with the kernel, the machine and the parameters;
``handovers.json``), the figures (``summary.json``, ``per_handover.json``), the plots and the
table (``table.txt``). Left out: the raw probe traces and the agents' traces (tens of MB), which
the figures were computed from when the run was reported. ``make compare A=<reference> B=<run>``
and ``make targets`` work on the kept part; ``make report`` shows its stored table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from scenarios.analysis import report

KEPT = ("record.json", "handovers.json", "summary.json", "per_handover.json")
REFERENCE_ROOT = Path("results/reference")


def keep(run_dir: Path, root: Path = REFERENCE_ROOT) -> Path:
    missing = [name for name in KEPT if not (run_dir / name).is_file()]
    if missing:
        raise report.ReportError(f"{run_dir}: not a reported run (missing {', '.join(missing)})")
    target = root / f"{run_dir.parent.name}-{run_dir.name}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEPT:
        shutil.copy2(run_dir / name, target / name)
    for plot in sorted(run_dir.glob("*.png")):
        shutil.copy2(plot, target / plot.name)
    # named as the repository holds it, and one page for a reader (the kept files are enough)
    (target / "table.txt").write_text(report.table(target) + "\n")
    report.write_html(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    arguments = parser.parse_args(argv)
    try:
        target = keep(Path(arguments.run_dir))
    except report.ReportError as error:
        print(f"reference: {error}", file=sys.stderr)
        return 2
    print(f"kept {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
