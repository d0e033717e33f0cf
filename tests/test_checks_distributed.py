"""Exercise 4.12 (ZeRO's memory per device): the solution passes, a blank and five plausible bugs fail,
the reference is refused, and the grading path agrees with honour mode. About 1 s."""
import pytest

from checker_harness import (assert_blank_fails, assert_mutant_fails, assert_reference_passes, assert_refused,
                             make_blank, mutant_ids, recorded_agrees_with_honour)
from plmkit import distributed
from plmkit.checks import gpt as checks
from solution_code import solutions

SOL = solutions("04_gpt")
CHECK = checks.check_zero_memory


def _zero(n, d, stage, *, shard_params=3, shard_grads=2, shard_optimizer=1, optimizer_bytes=12, divide=None):
    divide = divide or (lambda a, b: a / b)
    return {"params": divide(n * 2, d) if stage >= shard_params else n * 2,
            "grads": divide(n * 2, d) if stage >= shard_grads else n * 2,
            "optimizer": divide(n * optimizer_bytes, d) if stage >= shard_optimizer else n * optimizer_bytes}


def zero_params_sharded_at_stage_2(n, d, stage):
    return _zero(n, d, stage, shard_params=2)


def zero_grads_sharded_at_stage_1(n, d, stage):
    return _zero(n, d, stage, shard_grads=1)


def zero_stage_0_shards_the_optimizer(n, d, stage):
    return _zero(n, d, stage, shard_optimizer=0)


def zero_no_fp32_master_copy(n, d, stage):
    return _zero(n, d, stage, optimizer_bytes=8)


def zero_integer_division(n, d, stage):
    return _zero(n, d, stage, divide=lambda a, b: a // b)


MUTANTS = [
    (CHECK, zero_params_sharded_at_stage_2, "params are sharded only from stage 3 on"),
    (CHECK, zero_grads_sharded_at_stage_1, "grads are sharded only from stage 2 on"),
    (CHECK, zero_stage_0_shards_the_optimizer, "optimizer are sharded only from stage 1 on"),
    (CHECK, zero_no_fp32_master_copy, "fp32 master copy"),
    (CHECK, zero_integer_division, "not //"),
]


def test_the_solution_passes_with_a_stable_line(capsys):
    assert_reference_passes(CHECK, SOL["zero_memory"], capsys, times=3)


def test_blank_fails(capsys):
    assert_blank_fails(CHECK, make_blank(4), capsys)


@pytest.mark.parametrize("check, fn, hint", MUTANTS, ids=mutant_ids(MUTANTS))
def test_plausible_bug_fails(check, fn, hint, capsys):
    assert_mutant_fails(check, fn, hint, capsys, times=3)


def test_calling_the_reference_fails(capsys):
    assert_refused(CHECK, distributed.zero_memory, capsys, named="distributed.zero_memory")


def test_the_grading_path_agrees(tmp_path):
    assert recorded_agrees_with_honour(CHECK, SOL["zero_memory"], 7, tmp_path / "ok") is True
    assert recorded_agrees_with_honour(CHECK, zero_no_fp32_master_copy, 7, tmp_path / "bug") is False
