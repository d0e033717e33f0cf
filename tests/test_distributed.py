"""The Trainer under torchrun (gloo, CPU) against one process: DDP, FSDP2, two "nodes", checkpoints across
world sizes, the data split, and the errors.

Three torchrun launches in all (about 5-7 s each on 2 cores; the two "nodes" run at the same time):
one with 2 processes runs every scenario of tests/ddp_worker.py, then two launches with
``--nnodes 2 --node_rank 0/1`` on 127.0.0.1 repeat two of them. The single-process references run in
this process. The whole file takes about 20 s.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker as w  # noqa: E402

from plmkit import distributed  # noqa: E402
from plmkit.train import Trainer, lm_loss  # noqa: E402

pytestmark = pytest.mark.xdist_group("distributed")
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "ddp_worker.py"
JOBS = ["ddp:pairs", "ddp:pairs_accum", "ddp:sft_accum", "fsdp:pairs_accum", "fsdp:sft_accum",
        "ddp:checkpoint", "fsdp:checkpoint", "ddp:rows", "ddp:errors", "fsdp:main"]
NODE_JOBS = ["ddp:pairs", "ddp:pairs_accum"]
TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, jobs: list[str], *args: str, device: str = "cpu") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PLMKIT_WORKER_DEVICE": device}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, str(WORKER), str(out), *jobs]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
    assert proc.returncode == 0, f"{what} failed:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Results of 2 processes on one node (`two`) and of 2 nodes x 1 process (`nodes`)."""
    two, nodes = tmp_path_factory.mktemp("two_procs"), tmp_path_factory.mktemp("two_nodes")
    port = free_port()
    finish(torchrun(two, JOBS, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                    "--master_port", str(free_port())), "torchrun --nproc_per_node 2")
    node = [torchrun(nodes, NODE_JOBS, "--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                     "--master_addr", "127.0.0.1", "--master_port", str(port)) for r in (0, 1)]
    for r, proc in enumerate(node):
        finish(proc, f"torchrun --nnodes 2 --node_rank {r}")
    return two, nodes


def load(folder: Path, job: str):
    return torch.load(folder / f"{job.replace(':', '_')}.pt", weights_only=False)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same_run(got: dict, want: dict) -> None:
    assert len(got["loss"]) == len(want["loss"]) > 0
    assert got["loss"] == pytest.approx(want["loss"], abs=TOL)             # the loss at every step
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=TOL)
    assert got["tokens"] == pytest.approx(want["tokens"])
    assert max_diff(got["state"], want["state"]) < TOL                      # the same final weights


def test_the_batches_are_uneven_so_the_token_average_matters():
    """Two ranks' mean of their own means is not the global per-token mean on these batches:
    a DDP run that averaged the ranks' mean losses would fail the equalities below."""
    model = w.tiny_gpt()
    x, y = w.pair_batches(1)[0]
    with torch.no_grad():
        whole = lm_loss(model, (x, y)).item()
        halves = (lm_loss(model, (x[:2], y[:2])).item() + lm_loss(model, (x[2:], y[2:])).item()) / 2
    assert abs(whole - halves) > 1e-3


@pytest.mark.parametrize("job", ["ddp:pairs", "ddp:pairs_accum", "ddp:sft_accum", "fsdp:pairs_accum",
                                 "fsdp:sft_accum"])
def test_two_processes_with_batch_b_equal_one_with_batch_2b(launched, job):
    assert_same_run(load(launched[0], job), w.run(job.split(":")[1], None))


def test_fsdp_holds_about_half_the_parameters_per_rank(launched):
    fsdp, ddp = load(launched[0], "fsdp:pairs_accum"), load(launched[0], "ddp:pairs_accum")
    assert ddp["local_numel"] == ddp["numel"]                               # DDP: a full copy per rank
    assert abs(fsdp["local_numel"] / fsdp["numel"] - 0.5) < 0.02            # FSDP: rank 0's shards


def test_the_command_line_under_torchrun_equals_one_process(launched, capsys):
    """`python -m plmkit.train` (a Llama, FSDP, 2 micro-batches) run by torchrun, against main() here."""
    import json

    from plmkit.train import main

    got = json.loads((launched[0] / "fsdp_main.json").read_text())
    want = main(w.MAIN_ARGS)
    assert "1 process(es)" in capsys.readouterr().out
    assert got["world_size"] == 2 and got["step"] == want["step"] == [1, 2, 3]
    assert got["loss"] == pytest.approx(want["loss"], abs=TOL)
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=TOL)


@pytest.mark.parametrize("job", NODE_JOBS)
def test_two_nodes_train_like_one_node_with_two_processes(launched, job):
    two, nodes = launched
    assert_same_run(load(nodes, job), load(two, job))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_checkpoint_from_two_processes_resumes_in_one(launched, strategy):
    """Saved at step 4 of 8 by 2 processes, loaded by 1: the rest of the loss curve and the final weights
    are those of the uninterrupted 2-process run."""
    straight = load(launched[0], f"{strategy}:checkpoint")
    ids = torch.randint(w.V, (400,), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(12345)                                                 # the checkpoint restores the RNG
    resumed = Trainer(w.tiny_gpt(seed=9), lambda: w.random_windows(ids, w.T, 4), max_steps=8, **w.COMMON)
    resumed.load_checkpoint(launched[0] / f"{strategy}_checkpoint_step4.pt")
    assert resumed.step == 4
    resumed.fit()
    assert resumed.history["loss"] == pytest.approx(straight["loss"], abs=TOL)
    assert max_diff(w.full_state(resumed.model), straight["state"]) < TOL


def test_ranks_never_train_on_the_same_rows(launched):
    """One epoch of a fixed dataset: every row of every global batch is trained on by exactly one rank,
    once. Random windows: the ranks split each global draw, which is one process's draw."""
    ranks = [torch.load(launched[0] / f"ddp_rows_rank{r}.pt") for r in (0, 1)]
    for i, (x, _) in enumerate(w.pair_batches(3)):
        assert torch.equal(torch.cat([ranks[0]["fixed"][i], ranks[1]["fixed"][i]]), x)
    ids = torch.arange(200) % w.V
    w.tiny_gpt()                                       # the worker built its model (and re-seeded) before drawing
    for i in range(3):
        x, _ = w.random_windows(ids, w.T, 4)
        a, b = ranks[0]["windows"][i], ranks[1]["windows"][i]
        assert torch.equal(torch.cat([a, b]), x) and not torch.equal(a, b)


def test_a_batch_that_does_not_split_is_refused(launched):
    message = load(launched[0], "ddp:errors")
    assert message and "divisible by the world size" in message and "3 rows" in message


def test_a_strategy_without_a_process_group_is_refused(monkeypatch):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs a process group.*torchrun"):
        Trainer(w.tiny_gpt(), w.pair_batches(1), max_steps=1, strategy="ddp", **w.COMMON)
    with pytest.raises(ValueError, match="strategy must be None or one of"):
        Trainer(w.tiny_gpt(), w.pair_batches(1), max_steps=1, strategy="zero", **w.COMMON)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="strategy=None would train each alone"):
        Trainer(w.tiny_gpt(), w.pair_batches(1), max_steps=1, **w.COMMON)


def test_shard_batch_splits_rows_and_checks_its_arguments():
    x = torch.arange(12).view(6, 2)
    parts = [distributed.shard_batch({"ids": x, "n": torch.tensor(3)}, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p["ids"] for p in parts]), x) and parts[2]["n"].item() == 3
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_batch(x, 2, 2)
    with pytest.raises(ValueError, match="same batch size"):
        distributed.shard_batch((x, x[:3]), 0, 2)


def test_the_docstring_examples_hold():
    import doctest

    failed, attempted = doctest.testmod(distributed)
    assert attempted >= 4 and failed == 0


def test_zero_memory_reproduces_the_zero_papers_figure_1():
    """Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 devices, K = 12 -> 120, 31.4, 16.6, 1.88 GB."""
    totals = [sum(distributed.zero_memory(7_500_000_000, 64, stage).values()) / 1e9 for stage in range(4)]
    assert [round(t, 2 if t < 10 else 1) for t in totals] == [120.0, 31.4, 16.6, 1.88]
    with pytest.raises(ValueError, match="stage must be 0, 1, 2 or 3"):
        distributed.zero_memory(10, 2, 4)
    with pytest.raises(ValueError, match="n_devices must be a positive int"):
        distributed.zero_memory(10, 0, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nccl)")
def test_nccl_on_one_gpu_equals_one_process(tmp_path, monkeypatch):
    """torchrun with 1 process on 1 GPU: nccl is chosen, DDP and FSDP train like the plain Trainer on cuda."""
    jobs = ["ddp:pairs_accum", "fsdp:pairs_accum", "ddp:checkpoint"]
    finish(torchrun(tmp_path, jobs, "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                    "--master_port", str(free_port()), device="cuda"), "torchrun on 1 GPU")
    monkeypatch.setitem(w.COMMON, "device", "cuda")
    for job in jobs:
        assert_same_run(load(tmp_path, job), w.run(job.split(":")[1], None))
