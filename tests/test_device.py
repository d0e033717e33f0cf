import pytest
import torch

from plmkit import device


def test_get_device_prefers_available_and_rejects_unknown(monkeypatch):
    monkeypatch.delenv("PLMKIT_DEVICE", raising=False)
    d = device.get_device()
    assert d.type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert d.type != "cuda"
    assert device.get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="prefer must be one of"):
        device.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            device.get_device("cuda")


def test_env_var_forces_device(monkeypatch):
    monkeypatch.setenv("PLMKIT_DEVICE", "cpu")
    assert device.get_device().type == "cpu"
    assert device.profile().name == "cpu"


def test_seed_everything_reproduces_and_validates():
    device.seed_everything(3)
    a = torch.randn(5)
    device.seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            device.seed_everything(bad)


def test_profile_pick_and_validation(monkeypatch):
    monkeypatch.delenv("PLMKIT_DEVICE", raising=False)
    monkeypatch.setenv("PLMKIT_PROFILE", "cpu")
    p = device.profile()
    assert p.name == "cpu" and p.pick(cpu=1, gpu=2) == 1
    with p.autocast():
        assert torch.ones(2).sum().item() == 2
    monkeypatch.setenv("PLMKIT_PROFILE", "huge")
    with pytest.raises(ValueError, match="PLMKIT_PROFILE"):
        device.profile()
    if not torch.cuda.is_available():
        monkeypatch.setenv("PLMKIT_PROFILE", "gpu")
        with pytest.raises(ValueError, match="no CUDA"):
            device.profile()


def test_autocast_dtype():
    assert device.autocast_dtype("cpu") is None
    if torch.cuda.is_available():
        assert device.autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
