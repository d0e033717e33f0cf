"""The pip-only install path in book/setup.md pins what the Makefile pins (under a second)."""
import re

from conftest import ROOT


def makefile_pins():
    make = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH_CPU := (torch==\S+)", make, re.M).group(1)
    nodeps = set(re.findall(r"--no-deps ([a-z0-9-]+==[\w.]+)", make))
    return torch, nodeps


def test_setup_page_installs_what_make_installs():
    setup = (ROOT / "book" / "setup.md").read_text()
    block = setup.split("## Exercises only", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    torch, nodeps = makefile_pins()
    assert f"pip install {torch} --index-url" in block, "the CPU wheel is pinned as the Makefile pins it"
    assert "-r requirements.txt" in block and "--no-deps -e ." in block
    for pin in nodeps:
        assert f"--no-deps {pin}" in block, f"{pin} (installed by make with --no-deps) is missing from setup.md"
    for word in ("sudo", "apt", "apt-get", "npm"):
        assert not re.search(rf"(^|\s){word}\s", block, re.M), f"the no-{word} path uses {word}"
    reqs = [ln.split("=")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    assert "torch" not in reqs, "requirements.txt must not pull torch (unpinned, it is a multi-GB CUDA build)"


def test_colab_cell_installs_the_same_model_files():
    setup = (ROOT / "book" / "setup.md").read_text()
    colab = setup.split("## Google Colab", 1)[1].split("```ipython3", 1)[1].split("```", 1)[0]
    _, nodeps = makefile_pins()
    for pin in nodeps:
        assert pin in colab, f"the Colab cell lacks {pin}"
    assert "requirements.txt" in colab and "torch==" not in colab, "Colab keeps its own CUDA torch"
