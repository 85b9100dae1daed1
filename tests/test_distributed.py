"""Training under torch.distributed: 2 CPU processes with gloo on 127.0.0.1.

The gathered-batch loss and its gradients must equal one process computing the loss over the whole
global batch (see deepmetric/training/distributed.py for the derivation); a 2-rank `deepmetric train`
must train, evaluate and write one run folder; a killed 2-rank run must resume exactly.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from deepmetric import losses
from deepmetric.training import Trainer, distributed, resume, train

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(dist.is_available() and not dist.is_gloo_available(), reason="gloo is not available"),
    pytest.mark.timeout(300),
]

WORLD = 2
TINY = [
    "model.backbone_options={in_channels: 1, image_size: 8, width: 8}",
    "model.embedding_size=16",
    "sampler.classes_per_batch=4",
    "sampler.samples_per_class=4",
    "eval.metrics=[recall@1, nmi]",
    "optimizer.lr=0.01",
]
# (name, overrides): a pair loss, triplet losses with two miners, a proxy loss
LOSS_CASES = [
    ("contrastive", ["loss.name=contrastive"]),
    ("triplet_batch_hard", ["loss.name=triplet", "miner.name=batch_hard"]),
    (
        "triplet_semi_hard",
        ["loss.name=triplet", "loss.margin=0.5", "miner.name=semi_hard", "miner.margin=0.5"],
    ),
    ("proxy_anchor", ["loss.name=proxy_anchor"]),
]


def tiny_config(*extra: str):
    from deepmetric.cli import demo_config_path
    from deepmetric.training import load_config

    return load_config(demo_config_path(), TINY + list(extra))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, port: int, worker, args: tuple) -> None:
    """One process of the group, set up as torchrun would (environment variables), then ``worker``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")
    assert distributed.is_distributed() and distributed.rank() == rank
    try:
        worker(*args)
    finally:
        distributed.teardown()


def launch(worker, *args, timeout: float = 240) -> None:
    """Run ``worker(*args)`` in ``WORLD`` spawned processes; fail (and kill them) past ``timeout``."""
    context = torch.multiprocessing.start_processes(
        _entry, args=(free_port(), worker, args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two P x K batches of 8x8 images (4 classes x 4 samples each), one per rank, in rank order."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(2 * 16, 1, 8, 8, generator=generator)
    labels = torch.cat(
        [torch.tensor([0, 1, 2, 3]).repeat_interleave(4), torch.tensor([1, 2, 3, 4]).repeat_interleave(4)]
    )
    return inputs, labels


def step_config(overrides: list[str]):
    # SGD without momentum: the update is lr * gradient, so a wrongly scaled gradient cannot hide;
    # frozen BatchNorm: per-rank batch statistics would differ from the global batch's by design.
    return tiny_config(
        *overrides, "optimizer.name=sgd", "optimizer.momentum=0", "model.freeze_batchnorm=true"
    )


def one_step(trainer: Trainer, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, object]:
    loss = trainer._step(inputs, labels)
    grads = {f"model.{n}": p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    grads |= {f"loss.{n}": p.grad.clone() for n, p in trainer.loss.named_parameters() if p.grad is not None}
    logging.getLogger("deepmetric").removeHandler(trainer._log_handler)
    trainer._log_handler.close()
    return {"loss": loss, "grads": grads}


def _step_worker(out: Path, cases: list[tuple[str, list[str]]]) -> None:
    inputs, labels = global_batch()
    rows = slice(16 * distributed.rank(), 16 * (distributed.rank() + 1))
    for name, overrides in cases:
        trainer = Trainer(step_config(overrides), out / f"run-{name}")
        result = one_step(trainer, inputs[rows], labels[rows])
        torch.save(result, out / f"{name}-rank{distributed.rank()}.pt")


def _group_worker(out: Path, cases: list[tuple[str, list[str]]]) -> None:
    """Everything the tests check inside one process group (starting processes is the slow part)."""
    _gather_worker(out)
    _step_worker(out, cases)
    _resume_worker(out)


@pytest.fixture(scope="module")
def group_results(tmp_path_factory) -> tuple[Path, list[str]]:
    """Results of 2 ranks: the gathers, one step of each loss case, a killed and resumed run."""
    out = tmp_path_factory.mktemp("group")
    cases = [
        (name, overrides) for name, overrides in LOSS_CASES if overrides[0].split("=")[1] in losses.names()
    ]
    launch(_group_worker, out, cases)
    return out, [name for name, _ in cases]


@pytest.mark.parametrize("case", [name for name, _ in LOSS_CASES])
def test_step_matches_single_process_on_global_batch(case, group_results, tmp_path):
    out, available = group_results
    if case not in available:
        pytest.skip(f"loss of {case} is not registered yet")
    overrides = dict(LOSS_CASES)[case]
    inputs, labels = global_batch()
    single = one_step(Trainer(step_config(overrides), tmp_path / "single"), inputs, labels)
    assert single["loss"] > 0
    for rank in range(WORLD):
        ranked = torch.load(out / f"{case}-rank{rank}.pt", weights_only=False)
        assert ranked["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-7)  # not multiplied by W
        assert ranked["grads"].keys() == single["grads"].keys()
        for key, grad in single["grads"].items():
            torch.testing.assert_close(ranked["grads"][key], grad, rtol=1e-4, atol=1e-6, msg=key)
    assert any(grad.abs().sum() > 0 for key, grad in single["grads"].items() if key.startswith("model."))
    if case == "proxy_anchor":  # the proxies are trained too, and their gradient is compared above
        assert single["grads"]["loss.proxies"].abs().sum() > 0


def _gather_worker(out: Path) -> None:
    rank = distributed.rank()
    # Uneven local batches (2 and 3 rows): the gather keeps rank order and sends each rank its rows'
    # gradient summed over the ranks' (equal) losses.
    local = (
        torch.arange(2 + rank, dtype=torch.float64).add(10 * rank).unsqueeze(1).repeat(1, 3).requires_grad_()
    )
    labels = torch.arange(2 + rank) + 10 * rank
    embeddings, gathered_labels = distributed.gather_batch(local, labels)
    weights = torch.arange(1.0, 1 + embeddings.numel(), dtype=torch.float64).view_as(embeddings)
    (embeddings * weights).sum().backward()
    # Evaluation gather: 5 items (shards of 2 and 3) and 1 item (rank 0 alone holds it) in dataset order.
    results = {}
    for count in (5, 1):
        dataset = torch.utils.data.TensorDataset(torch.arange(count * 4, dtype=torch.float32).view(count, 4))
        results[count] = distributed.embed_in_shards(
            lambda part: np.stack([part[i][0].numpy() for i in range(len(part))]),
            dataset,
            torch.device("cpu"),
        )
    flags = distributed.all_gather_rows(torch.tensor([rank == 0] * (rank + 1)))
    torch.save(
        {
            "embeddings": embeddings.detach(),
            "labels": gathered_labels,
            "grad": local.grad,
            "weights": weights,
            "shards": results,
            "flags": flags,
            "metric": distributed.broadcast_object({"recall@1": 0.5} if rank == 0 else None),
        },
        out / f"gather-rank{rank}.pt",
    )


def test_gathers_keep_rank_order_and_route_gradients(group_results):
    out, _ = group_results
    for rank in range(WORLD):
        result = torch.load(out / f"gather-rank{rank}.pt", weights_only=False)
        expected_rows = torch.tensor([0.0, 1, 10, 11, 12], dtype=torch.float64)
        torch.testing.assert_close(result["embeddings"], expected_rows[:, None].repeat(1, 3))
        assert result["labels"].tolist() == [0, 1, 10, 11, 12]
        rows = slice(0, 2) if rank == 0 else slice(2, 5)
        torch.testing.assert_close(result["grad"], WORLD * result["weights"][rows])  # all-reduce: sum of W
        np.testing.assert_array_equal(result["shards"][5], np.arange(20, dtype=np.float32).reshape(5, 4))
        np.testing.assert_array_equal(result["shards"][1], np.arange(4, dtype=np.float32).reshape(1, 4))
        assert result["flags"].tolist() == [True, False, False]
        assert result["metric"] == {"recall@1": 0.5}


def test_single_process_helpers_are_identities():
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")
    embeddings, labels = torch.randn(4, 3, requires_grad=True), torch.arange(4)
    gathered, gathered_labels = distributed.gather_batch(embeddings, labels)
    assert gathered is embeddings and gathered_labels is labels
    assert distributed.shard(7) == range(7)
    model = torch.nn.Linear(3, 2)
    assert distributed.parallel_forward(model, features=False, device=torch.device("cpu")) is model


def test_train_cli_under_torchrun_writes_one_run_folder(tmp_path):
    from deepmetric.cli import demo_config_path

    overrides = [
        *TINY,
        "loss.name=contrastive",
        "train.iterations=4",
        "train.eval_every=2",
        "train.log_every=2",
    ]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "deepmetric.cli", "train", str(demo_config_path()), *overrides, "--out", "runs/tiny",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    run = tmp_path / "runs"
    assert [p.name for p in run.iterdir()] == ["tiny"]
    run = run / "tiny"
    for name in ("config.yaml", "metrics.json", "log.jsonl", "train.log", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and set(metrics["trained"]) == {"recall@1", "nmi"}
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 2, 2, 4, 4]  # written once: by rank 0 alone
    embeddings = np.load(run / "embeddings/test_embeddings.npy")
    labels = np.load(run / "embeddings/test_labels.npy")
    assert embeddings.shape == (len(labels), 16) and set(labels) == {5, 6, 7, 8, 9}
    # Gathered in dataset order: rank 0's evaluation equals one process embedding with the saved model.
    from deepmetric.data import get_dataset
    from deepmetric.data.transforms import build_transform
    from deepmetric.training import embed_dataset, load_model

    model = load_model(run)
    dataset = get_dataset("digits", split="test", transform=build_transform(model.input_spec, train=False))
    np.testing.assert_allclose(embed_dataset(model, dataset), embeddings, atol=1e-5)


def _resume_worker(out: Path) -> None:
    overrides = [
        "loss.name=proxy_anchor",
        "train.iterations=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]
    train(tiny_config(*overrides), out / "straight")
    real_step = Trainer._step

    def crashing_step(self, inputs, labels):
        if self.iteration == 3:  # after the checkpoint at 2, on every rank (as when the job is killed)
            raise RuntimeError("simulated kill")
        return real_step(self, inputs, labels)

    Trainer._step = crashing_step
    try:
        train(tiny_config(*overrides), out / "crashed")
    except RuntimeError as error:
        assert "simulated kill" in str(error)
    finally:
        Trainer._step = real_step
    distributed.barrier()
    resume(out / "crashed")


def test_resume_under_torch_distributed_matches_uninterrupted_run(group_results):
    out, _ = group_results
    straight, crashed = out / "straight", out / "crashed"
    assert json.loads((crashed / "metrics.json").read_text()) == json.loads(
        (straight / "metrics.json").read_text()
    )

    def log(run):
        return [
            {k: v for k, v in json.loads(line).items() if k != "elapsed"}
            for line in (run / "log.jsonl").open()
        ]

    assert log(crashed) == log(straight)
    a = torch.load(straight / "checkpoints/last.pt", weights_only=False)
    b = torch.load(crashed / "checkpoints/last.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["loss"]["proxies"], b["loss"]["proxies"])
