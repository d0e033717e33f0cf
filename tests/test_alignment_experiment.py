"""The chapter-8 sweep script runs at smoke size and writes a labelled JSON with every method."""
import json
import subprocess
import sys
from pathlib import Path


def test_alignment_frontier_smoke_writes_a_labelled_json(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(root / "experiments" / "alignment_frontier.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for key in ("command", "date", "device", "torch", "git_commit", "seeds", "settings"):
        assert key in data["label"]
    (run,) = data["seeds"]
    methods = {r["method"] for r in run["runs"]}
    assert methods == {"SFT", "best-of-N", "PPO", "DPO", "GRPO", "Dr. GRPO", "GRPO on r*"}
    assert all(isinstance(r["true_reward"], float) and isinstance(r["kl"], float) for r in run["runs"])
    assert 0.5 <= run["noise_ceiling"] <= 1.0
    assert run["hacking"]["curve"][0]["update"] == 0
    for r in run["runs"]:                                   # true reward per length, for the length confound
        counts = [c for c, _ in r["by_length"].values()]
        assert sum(counts) > 0 and all(c > 0 for c in counts)
    assert all(r["kl_is"] == "analytic upper bound" for r in run["runs"] if r["method"] == "best-of-N")
