"""The README's demo figures come from the code: a fresh ``deepmetric demo`` reproduces them to ±0.005."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepmetric.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# the README's name of each figure -> the key in metrics.json
FIGURES = {"Recall@1": "recall@1", "NMI": "nmi", "MAP@R": "map@r"}


def readme_demo_figures() -> dict[str, tuple[float, float]]:
    """metric -> (untrained, trained) from the README's line "`make demo`: ...; Recall@1 A -> B, ..."."""
    line = next(line for line in README.read_text().split("\n- ") if line.startswith("`make demo`:"))
    found = {}
    for name, key in FIGURES.items():
        match = re.search(rf"{re.escape(name)} (\d\.\d+) -> (\d\.\d+)", line)
        if match:
            found[key] = (float(match.group(1)), float(match.group(2)))
    return found


def test_readme_states_the_demo_figures():
    assert set(readme_demo_figures()) == set(FIGURES.values())


@pytest.mark.slow
def test_demo_reproduces_the_readme_figures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for key, (untrained, trained) in readme_demo_figures().items():
        assert metrics["untrained"][key] == pytest.approx(untrained, abs=0.005), key
        assert metrics["trained"][key] == pytest.approx(trained, abs=0.005), key
