"""experiments/sft_study.py runs end to end at smoke size and writes a labelled JSON."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sft_study_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("sft_study", ROOT / "experiments" / "sft_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "smoke.json"
    module.main(["--smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    for key in ("command", "date", "device", "git_commit", "seeds", "settings", "results"):
        assert key in record
    assert set(record["results"]) == {"headline", "loss", "lora", "examples"}
    (h,) = record["results"]["headline"]
    for key in ("seen", "unseen", "base_chat", "base_completion", "bio_loss_before", "bio_loss_after",
                "writes_user_turn", "trainable", "optimizer_state_bytes"):
        assert key in h
    assert 0.0 <= h["unseen"] <= 1.0 and h["trainable"] == h["total"]
    (lo,) = record["results"]["lora"]
    assert lo["lora_rank"] == 2 and 0 < lo["trainable"] < lo["total"]
    assert record["results"]["loss"][0]["response_only"] is False
    assert record["results"]["examples"][0]["n_people"] == 10
