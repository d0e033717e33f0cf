"""The checker core: honour mode, grading mode (record -> judge_recorded), plain data only."""
import json

import pytest
import torch

from plmkit import checks
from plmkit.checks import _core
from plmkit.checks import warmup
from solution_code import solutions

SOL = solutions("00_warmup")


def test_registry_and_load_all():
    reg = checks.load_all()
    for ex in ("0.1", "0.2", "0.3", "0.4"):
        assert reg[ex].exercise == ex and reg[ex].name
    assert checks.registry()["0.1"] is warmup.check_softmax


def test_grading_mode_records_and_the_grader_judges(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLMKIT_GRADE_DIR", str(tmp_path))
    monkeypatch.setenv("PLMKIT_GRADE_SEED", "1234")
    warmup.check_softmax(SOL["softmax"])
    warmup.check_log_softmax(lambda x, dim=-1: SOL["softmax"](x, dim))          # wrong: not the log
    out = capsys.readouterr().out
    assert out.splitlines() == ["📝 Exercise 0.1 softmax: answers recorded for grading",
                                "📝 Exercise 0.2 log_softmax: answers recorded for grading"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.1.json", "0.1.safetensors",
                                                          "0.2.json", "0.2.safetensors"]
    good = checks.judge_recorded("0.1", 1234, tmp_path)
    assert good.passed and good.line.startswith("✅ Exercise 0.1 softmax:") and good.reasons == []
    bad = checks.judge_recorded("0.2", 1234, tmp_path)
    assert not bad.passed and bad.line.startswith("❌ Exercise 0.2") and bad.reasons
    # the same answers judged against another seed's cases do not count
    assert not checks.judge_recorded("0.1", 99, tmp_path).passed
    missing = checks.judge_recorded("0.3", 1234, tmp_path)
    assert not missing.passed and "did not run" in missing.line


def test_forged_or_broken_records_fail_without_crashing(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_GRADE_DIR", str(tmp_path))
    monkeypatch.setenv("PLMKIT_GRADE_SEED", "7")
    warmup.check_softmax(SOL["softmax"])
    meta = json.loads((tmp_path / "0.1.json").read_text())
    meta["results"] = "everything passed"
    (tmp_path / "0.1.json").write_text(json.dumps(meta))
    assert not checks.judge_recorded("0.1", 7, tmp_path).passed
    (tmp_path / "0.1.json").write_text("not json")
    v = checks.judge_recorded("0.1", 7, tmp_path)
    assert not v.passed and "could not be read" in v.line


def test_honour_mode_matches_the_recorded_path(tmp_path):
    ex = warmup.check_cross_entropy
    honour = ex.honour(SOL["cross_entropy"], seed=5)
    ex.record(SOL["cross_entropy"], seed=5, folder=tmp_path)
    assert checks.judge_recorded("0.3", 5, tmp_path).line == honour.line


class AlwaysEqual:
    def __eq__(self, other):
        return True


class EvilInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class EvilTensor(torch.Tensor):
    pass


def test_foreign_objects_never_reach_the_judge():
    with pytest.raises(_core.NotPlain):
        _core.to_plain(AlwaysEqual())
    with pytest.raises(_core.NotPlain):
        _core.to_plain([1, (2, AlwaysEqual())])
    with pytest.raises(_core.NotPlain):
        _core.to_plain(torch.zeros(2).as_subclass(EvilTensor))
    plain = _core.to_plain({(1, 2): EvilInt(3)})
    assert type(plain[(1, 2)]) is int and plain[(1, 2)] == 3 and not _core.same(plain, {(1, 2): 4})
    v = warmup.check_softmax.honour(lambda x, dim=-1: AlwaysEqual(), seed=1)
    assert not v.passed and "AlwaysEqual" in v.reasons[0]


def test_same_is_strict_about_types():
    assert _core.same([1, (2, 3)], [1, (2, 3)])
    assert not _core.same([1, 2], (1, 2))
    assert not _core.same(1, 1.0) and not _core.same(1, True)
    assert not _core.same(torch.zeros(2), torch.zeros(2, dtype=torch.float64))


def test_cases_are_deterministic_per_seed_and_exercise():
    a = warmup.check_softmax.make_cases(3)
    b = warmup.check_softmax.make_cases(3)
    c = warmup.check_softmax.make_cases(4)
    assert all(torch.equal(x["args"][0], y["args"][0]) for x, y in zip(a, b))
    assert not torch.equal(a[1]["args"][0], c[1]["args"][0])


def test_the_record_holds_no_pickle(tmp_path):
    warmup.check_train_loop.record(SOL["train_loop"], seed=2, folder=tmp_path)
    raw = (tmp_path / "0.4.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16]                       # not a pickle stream
    json.loads((tmp_path / "0.4.json").read_text())


def test_patching_the_checker_in_the_kernel_cannot_forge_a_verdict(tmp_path, monkeypatch):
    """The kernel side may patch anything; the grader judges in a process that never saw it."""
    import subprocess
    import sys

    from plmkit.checks import _core as core
    monkeypatch.setattr(core.Report, "check", lambda self, ok, reason: True)
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch.Tensor, "__eq__", lambda self, other: True)

    def wrong(x, dim=-1):
        return x * 0 + 1.0

    warmup.check_softmax.record(wrong, seed=21, folder=tmp_path)
    assert warmup.check_softmax.honour(wrong, seed=21).passed          # honour mode is the honour system
    code = ("from plmkit import checks; v = checks.judge_recorded('0.1', 21, r'%s'); "
            "print(v.passed); print(v.line)" % tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False" and out.splitlines()[1].startswith("❌"), out


def test_switching_the_detector_off_is_reported():
    import sys

    import plmkit.basics as basics

    def sneaky(x, dim=-1):
        sys.setprofile(None)
        return basics.softmax(x, dim)

    v = warmup.check_softmax.honour(sneaky, seed=4)
    assert not v.passed and any("switched off" in r for r in v.reasons), v.text()


def test_unrecordable_results_fail_their_exercise_only(tmp_path):
    for bad in (lambda x, dim=-1: x.to(torch.complex64), lambda x, dim=-1: x.to(torch.float8_e4m3fn),
                lambda x, dim=-1: torch.zeros(0)):
        warmup.check_softmax.record(bad, seed=1, folder=tmp_path)
        v = checks.judge_recorded("0.1", 1, tmp_path)
        assert not v.passed and v.reasons, v.text()
