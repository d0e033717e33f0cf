"""The FastDecoder on a CUDA device: the step compiled by inductor and captured as a CUDA graph
(mode="reduce-overhead") gives the tokens of eager and uncached decoding, for GPT, Llama (GQA)
and T5, and is compiled once for all calls.

Skipped without CUDA (run with ``pytest -m gpu tests/test_inference_gpu.py`` where a GPU is lent;
~1-2 min, mostly compilation).
"""
import pytest
import torch

from plmkit.generate import generate
from plmkit.inference import FastDecoder

from test_inference_fast import gpt, llama_gqa, t5

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("make", [gpt, llama_gqa, t5], ids=["gpt", "llama_gqa", "t5"])
def test_cuda_graph_decoding_gives_the_uncached_tokens(make):
    from torch._dynamo.utils import counters

    model = make().cuda()
    prompts = [[5, 9, 11, 4], [7, 3]]
    want = generate(model, prompts, 10, temperature=0, use_cache=False)
    torch._dynamo.reset()
    counters.clear()
    fast = FastDecoder(make().cuda(), batch_size=2, max_length=16)
    assert fast.compiled
    for _ in range(3):                                  # compiled once, replayed on every later call
        assert generate(fast, prompts, 10, temperature=0) == want
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
