"""bench/bench_decode.py runs on CPU (a few tokens) and prints every mode's ratios; its modes agree."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_decode_runs_on_cpu_and_prints_the_ratios():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "bench/bench_decode.py", "--new-tokens", "4", "--repeats", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for mode in ("hf", "uncached", "dynamic", "static", "fast"):
        assert any(line.split()[:1] == [mode] and line.rstrip().endswith("100%") for line in out.stdout.splitlines()), \
            out.stdout
    assert "floor" in out.stdout and "copy" in out.stdout
