"""Fair benchmarks: one protocol, many methods, several seeds, mean ± std (``deepmetric bench SUITE.yaml``).

    from deepmetric.suites import run_suite
    paths = run_suite("benchmarks/suites/cub_subset_frozen.yaml", out_dir="bench/cub")

1. ``select`` (when the suite has one): per method, a small grid trained with held-out *training* classes
   as validation; the best setting on validation is kept (:mod:`deepmetric.suites.selection`).
2. the grid: methods x varied fields x seeds, each a run folder (:mod:`deepmetric.suites.suite`),
   finished runs skipped and killed runs resumed (:mod:`deepmetric.suites.runner`);
3. with ``compare_pml``, the same grid with pytorch-metric-learning's classes (:mod:`.pml`);
4. ``results.md``, ``results.csv`` and plots (:mod:`deepmetric.suites.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from deepmetric.suites.report import write_results
from deepmetric.suites.runner import run_grid
from deepmetric.suites.selection import run_selection
from deepmetric.suites.suite import RunSpec, Suite, expand_grid, load_suite, suite_from_dict

__all__ = ["RunSpec", "Suite", "expand_grid", "load_suite", "run_suite", "suite_from_dict"]


def run_suite(
    suite: Suite | str | Path,
    out_dir: str | Path | None = None,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    compare_pml: bool = False,
    select: bool = True,
    announce: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or finish) a suite and write its results; returns the written paths and run records.

    ``out_dir`` defaults to ``bench/<suite name>``. ``only`` restricts the methods, ``seeds`` the seeds
    (e.g. a quick reduced run); ``select=False`` skips validation selection and uses the settings as
    written (or those already in ``OUT/selected.yaml``).
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    out_dir = Path(out_dir) if out_dir is not None else Path("bench") / suite.name
    started = time.time()
    chosen: dict[str, dict[str, Any]] = {}
    if suite.select is not None and select:
        announce(f"{suite.name}: selecting hyper-parameters on validation classes")
        selected = run_selection(suite, out_dir, only, announce)
        chosen = {key: choice["overrides"] for key, choice in selected.items()}
    elif (out_dir / "selected.yaml").is_file():
        saved = yaml.safe_load((out_dir / "selected.yaml").read_text()) or {}
        chosen = {key: choice["overrides"] for key, choice in saved.items()}
    specs = expand_grid(suite, out_dir, only, seeds, chosen=chosen)
    if compare_pml:
        from deepmetric.suites.pml import pml_available, register_pml

        if pml_available():
            register_pml()
            specs += expand_grid(suite, out_dir, only, seeds, implementation="pml", chosen=chosen)
        else:
            announce("--compare-pml: pytorch-metric-learning is not installed; skipping the PML runs")
    announce(f"{suite.name}: {len(specs)} runs in {out_dir}")
    records = run_grid(specs, out_dir / "timings.jsonl", announce)
    full_selection = yaml.safe_load((out_dir / "selected.yaml").read_text()) if chosen else None
    paths = write_results(suite, specs, out_dir, full_selection)
    seconds = time.time() - started
    announce(f"{suite.name}: done in {seconds:.0f} s; table: {paths['markdown']}")
    return {"paths": paths, "records": records, "seconds": seconds, "specs": specs}
