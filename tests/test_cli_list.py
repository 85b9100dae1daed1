"""``deepmetric list``: every registry and name table, all kinds or one."""

from __future__ import annotations

import pytest

from deepmetric import data, losses, miners, models, retrieval, samplers
from deepmetric.cli import main
from deepmetric.cli.listing import KINDS
from deepmetric.distances import DISTANCES
from deepmetric.retrieval.sharded_index import index_kinds
from deepmetric.training.callbacks import CALLBACKS
from deepmetric.training.optim import OPTIMIZERS, SCHEDULES


def listed(capsys, *kind: str) -> dict[str, list[str]]:
    assert main(["list", *kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split(": ")[0]: line.split(": ", 1)[1].split(", ") for line in lines}


def test_lists_every_kind_from_its_registry(capsys):
    found = listed(capsys)
    assert list(found) == list(KINDS)
    assert found["losses"] == losses.LOSSES.names() and {"dpsh", "dtsh", "dsh", "hashing"} <= set(
        found["losses"]
    )
    assert found["miners"] == miners.MINERS.names()
    assert found["datasets"] == data.DATASETS.names()
    assert found["backbones"] == models.BACKBONES.names()
    assert found["heads"] == ["embedding", "hash"]
    assert found["poolings"] == list(models.POOLINGS)
    assert found["optimizers"] == OPTIMIZERS.names()
    assert found["schedules"] == SCHEDULES.names()
    assert found["samplers"] == samplers.SAMPLERS.names()
    assert found["backends"] == retrieval.SEARCH_BACKENDS.names() and "hamming" in found["backends"]
    assert found["distances"] == sorted(DISTANCES)
    assert {"recall@K", "map@r", "nmi"} <= set(found["metrics"])
    assert found["sharded-indexes"] == index_kinds() and "ivfpq" in found["sharded-indexes"]
    assert found["callbacks"] == CALLBACKS.names() and {"jsonl", "tensorboard", "mlflow"} <= set(
        found["callbacks"]
    )
    assert found["suite-searches"] == ["grid", "optuna"]


def test_one_kind(capsys):
    assert listed(capsys, "heads") == {"heads": ["embedding", "hash"]}
    assert listed(capsys, "backends") == {"backends": retrieval.SEARCH_BACKENDS.names()}


def test_unknown_kind_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "nope"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
