"""Chapter 8's controlled experiment: a toy task whose true reward is known.

After the DPO paper's controlled sentiment generation (Rafailov et al. 2023, sec. 6.1):
when the "human" is a program, we can score every method by the reward it was
really meant to optimise, and measure how far each policy moved from the
reference, with no human labels and no guessing.

The task. A prompt is ``<s>`` and two topic words; a response is up to
``MAX_NEW`` words ending with ``</s>``. Words are positive (good, great, ...),
negative (bad, awful, ...) or neutral (the, cat, park, ...). The true reward

    r*(y) = #distinct positive words - #negative words - 0.5 * #repeated words

likes upbeat answers and dislikes saying the same word twice, so a policy cannot
farm it by repetition. Pieces:

- :func:`natural_responses` — the "pretraining/SFT data": random short answers;
- :func:`train_sft` — a tiny Llama taught those answers: the common starting policy;
- :func:`preference_pairs` — two samples from the starting policy per prompt, labelled
  by a Bradley–Terry "annotator" on r* (``length_bias`` plants a spurious feature:
  in that fraction of pairs the longer answer wins whatever r* says);
- :func:`train_reward_model`, :func:`train_dpo`, :func:`best_of_n` and
  :func:`evaluate` (true reward and KL to the reference from fresh samples).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..generate import generate
from ..models.llama import Llama, LlamaConfig
from . import dpo as _dpo
from . import ppo as _ppo
from . import reward as _reward

__all__ = ["WORDS", "PAD", "BOS", "EOS", "POSITIVE", "NEGATIVE", "NEUTRAL", "MAX_NEW", "PROMPT_LEN", "decode",
           "true_reward", "prompts", "natural_responses", "policy_config", "train_sft", "sample",
           "preference_pairs", "train_reward_model", "reward_fn", "train_dpo", "best_of_n", "evaluate",
           "reward_by_length"]

SPECIAL = ["<pad>", "<s>", "</s>"]
POSITIVE_WORDS = ["good", "great", "fine", "nice", "happy", "kind"]
NEGATIVE_WORDS = ["bad", "awful", "sad", "poor", "rude", "ugly"]
NEUTRAL_WORDS = ["the", "a", "cat", "dog", "park", "day", "food", "movie", "book", "was", "is", "and", "very",
                 "so", "it", "we", "they", "too", "today", "there"]
WORDS = SPECIAL + POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS                     # V = 35
PAD, BOS, EOS = 0, 1, 2
POSITIVE = list(range(3, 3 + len(POSITIVE_WORDS)))
NEGATIVE = list(range(POSITIVE[-1] + 1, POSITIVE[-1] + 1 + len(NEGATIVE_WORDS)))
NEUTRAL = list(range(NEGATIVE[-1] + 1, len(WORDS)))
MAX_NEW = 12
PROMPT_LEN = 3


def decode(ids) -> str:
    """Token ids -> words, stopping at </s> (shown) and dropping padding."""
    out = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        if i == PAD:
            continue
        out.append(WORDS[i])
        if i == EOS:
            break
    return " ".join(out)


def true_reward(responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r*(y) for responses (B, N) with mask (B, N) (1 = part of the response, </s> included) -> (B,)."""
    words = mask.bool() & (responses != EOS) & (responses != PAD)
    V = len(WORDS)
    counts = torch.zeros(responses.size(0), V, device=responses.device)
    counts.scatter_add_(1, responses * words, words.float())                          # (B, V) word counts
    counts[:, 0] = 0
    pos = torch.tensor(POSITIVE, device=responses.device)
    neg = torch.tensor(NEGATIVE, device=responses.device)
    distinct_pos = (counts[:, pos] > 0).float().sum(1)
    n_neg = counts[:, neg].sum(1)
    repeats = (counts - 1).clamp(min=0).sum(1)
    return distinct_pos - n_neg - 0.5 * repeats


def prompts(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3) prompts: <s> and two neutral topic words."""
    topic = torch.tensor(NEUTRAL)[torch.randint(len(NEUTRAL), (batch_size, PROMPT_LEN - 1), generator=generator)]
    return torch.cat([torch.full((batch_size, 1), BOS), topic], dim=1)


def natural_responses(n: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """n random answers of 3..10 words (60% neutral, 20% positive, 20% negative), each ending with </s>."""
    out = []
    for _ in range(n):
        L = int(torch.randint(3, 11, (1,), generator=generator))
        cls = torch.multinomial(torch.tensor([0.6, 0.2, 0.2]), L, replacement=True, generator=generator)
        row = []
        for c in cls.tolist():
            pool = (NEUTRAL, POSITIVE, NEGATIVE)[c]
            row.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        out.append(row + [EOS])
    return out


def policy_config(hidden_size: int = 64, layers: int = 2) -> LlamaConfig:
    """A ~0.1M-parameter Llama over the toy vocabulary."""
    return LlamaConfig(vocab_size=len(WORDS), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=32,
                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def train_sft(steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
              config: LlamaConfig | None = None) -> Llama:
    """The starting policy: a Llama trained with the response-only loss (chapter 7) on natural answers."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Llama(config or policy_config())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        p = prompts(batch_size, g).tolist()
        batch = _dpo.preference_batch(p, natural_responses(batch_size, g), [[EOS]] * batch_size, PAD)
        half = {k: v[:batch_size] for k, v in batch.items()}                       # the "chosen" half only
        logp = _dpo.completion_logprobs(model, half)                                # (B,) summed
        loss = -logp.sum() / half["completion_mask"].sum()                          # mean over response tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def sample(model: Llama, prompt_ids: torch.Tensor, generator: torch.Generator | None = None,
           temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses (B, MAX_NEW) padded after </s>, and their masks (1 up to and including </s>)."""
    seqs = generate(model, prompt_ids, MAX_NEW, temperature=temperature, stop_tokens=[EOS], pad_token_id=PAD,
                    generator=generator)
    resp = F.pad(seqs[:, prompt_ids.size(1):], (0, MAX_NEW - (seqs.size(1) - prompt_ids.size(1))), value=PAD)
    return resp, _ppo.response_mask(resp, EOS) * (resp != PAD).long()


def _trim(resp: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(resp, mask)]


def preference_pairs(policy: Llama, n: int, length_bias: float = 0.0, seed: int = 0) -> dict:
    """n labelled pairs: two samples of `policy` per prompt; chosen ~ Bradley–Terry on r*.

    With probability ``length_bias`` a pair is labelled by length instead (longer wins; a
    tie falls back to r*). Returns prompts, chosen, rejected (token-id lists), the
    annotator's expected accuracy under r* ("noise ceiling": E[max(p, 1 - p)]) and the
    fraction of pairs where the longer answer was chosen.
    """
    g = torch.Generator().manual_seed(seed)
    p = prompts(n, g)
    a, ma = sample(policy, p, g)
    b, mb = sample(policy, p, g)
    ra, rb = true_reward(a, ma), true_reward(b, mb)
    p_a = torch.sigmoid(ra - rb)                                                   # P(a preferred)
    a_wins = torch.rand(n, generator=g) < p_a
    la, lb = ma.sum(1), mb.sum(1)
    by_length = (torch.rand(n, generator=g) < length_bias) & (la != lb)
    a_wins = torch.where(by_length, la > lb, a_wins)
    A, B = _trim(a, ma), _trim(b, mb)
    chosen = [x if w else y for x, y, w in zip(A, B, a_wins.tolist())]
    rejected = [y if w else x for x, y, w in zip(A, B, a_wins.tolist())]
    longer = [len(c) > len(r) for c, r in zip(chosen, rejected) if len(c) != len(r)]
    return {"prompts": p.tolist(), "chosen": chosen, "rejected": rejected,
            "noise_ceiling": float(torch.maximum(p_a, 1 - p_a).mean()),
            "longer_chosen": sum(longer) / max(1, len(longer))}


def _rows(pairs: dict, idx: list[int]):
    chosen = [pairs["prompts"][i] + pairs["chosen"][i] for i in idx]
    rejected = [pairs["prompts"][i] + pairs["rejected"][i] for i in idx]
    return _reward.pad_right(chosen, PAD), _reward.pad_right(rejected, PAD)


def train_reward_model(init: Llama, pairs: dict, held_out: dict | None = None, epochs: int = 3, batch_size: int = 64,
                       lr: float = 2e-3, seed: int = 0) -> tuple[_reward.RewardModel, dict]:
    """A reward model initialised from `init` (as InstructGPT starts it from the SFT model), trained with the
    Bradley–Terry loss. Returns it and {"train_accuracy", "held_out_accuracy"}."""
    torch.manual_seed(seed)
    model = _reward.RewardModel(copy.deepcopy(init))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n = len(pairs["chosen"])
    for _ in range(epochs):
        order = torch.randperm(n).tolist()
        for s in range(0, n, batch_size):
            (ci, cm), (ri, rm) = _rows(pairs, order[s:s + batch_size])
            loss, _ = _reward.reward_loss(model, ci, cm, ri, rm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    stats = {"train_accuracy": _accuracy(model, pairs)}
    if held_out is not None:
        stats["held_out_accuracy"] = _accuracy(model, held_out)
    return model, stats


@torch.no_grad()
def _accuracy(model, pairs) -> float:
    (ci, cm), (ri, rm) = _rows(pairs, list(range(len(pairs["chosen"]))))
    return float(_reward.preference_accuracy(model(ci, cm), model(ri, rm)))


def reward_fn(model: _reward.RewardModel):
    """A PPO reward function from a reward model: score(responses, mask, prompts) -> (B,), each response
    scored after its own prompt, as the reward model saw (prompt + answer) rows in training."""
    @torch.no_grad()
    def score(responses: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([prompts, responses * mask], dim=1)                        # padding -> <pad>
        return model(ids, torch.cat([torch.ones_like(prompts), mask], dim=1))
    return score


def train_dpo(init: Llama, pairs: dict, beta: float = 0.1, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
              loss_type: str = "sigmoid", seed: int = 0, step_fn=None) -> Llama:
    """DPO from `init` (also the frozen reference) on the preference pairs.

    step_fn(policy, ref, optimizer, batch, beta) -> loss, one optimiser step (default: plmkit's, with
    `loss_type`); chapter 8 passes the learner's capstone here."""
    torch.manual_seed(seed)
    policy, ref = copy.deepcopy(init).train(), copy.deepcopy(init).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    n = len(pairs["chosen"])
    for _ in range(epochs):
        order = torch.randperm(n).tolist()
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            batch = _dpo.preference_batch([pairs["prompts"][i] for i in idx], [pairs["chosen"][i] for i in idx],
                                          [pairs["rejected"][i] for i in idx], PAD)
            if step_fn is not None:
                step_fn(policy, ref, opt, batch, beta)
                continue
            loss, _ = _dpo.dpo_step(policy, ref, batch, beta, loss_type)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return policy.eval()


@torch.no_grad()
def _kl_and_true(policy: Llama, ref: Llama, p: torch.Tensor, resp: torch.Tensor, mask: torch.Tensor):
    seqs = torch.cat([p, resp], dim=1)
    P = p.size(1)
    logp = _ppo.token_logprobs(policy(seqs)[:, P - 1:-1], resp)
    ref_logp = _ppo.token_logprobs(ref(seqs)[:, P - 1:-1], resp)
    return ((logp - ref_logp) * mask).sum(1), true_reward(resp, mask)


@torch.no_grad()
def evaluate(policy: Llama, ref: Llama, n: int = 512, seed: int = 1234) -> dict:
    """Fresh samples from `policy`: mean true reward, mean sequence KL(policy || ref) (k1 summed over
    tokens, a Monte Carlo estimate), mean length, and a few decoded samples."""
    g = torch.Generator().manual_seed(seed)
    p = prompts(n, g)
    resp, mask = sample(policy, p, g)
    kl, r = _kl_and_true(policy, ref, p, resp, mask)
    return {"true_reward": float(r.mean()), "kl": float(kl.mean()), "length": float(mask.sum(1).float().mean()),
            "by_length": reward_by_length(r, mask), "samples": [decode(x) for x in resp[:4]]}


def reward_by_length(r: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """True rewards (B,) grouped by response length in tokens (</s> included): {"L": [count, mean r*]}.

    r* counts words, so it can be bought with length; comparing policies at one length removes that.

    >>> reward_by_length(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0]]))
    {'1': [1, 0.0], '2': [2, 2.0]}
    """
    lengths = mask.sum(1)
    return {str(L): [int((lengths == L).sum()), float(r[lengths == L].mean())] for L in sorted(set(lengths.tolist()))}


@torch.no_grad()
def best_of_n(policy: Llama, score_fn, N: int, n: int = 256, seed: int = 1234) -> dict:
    """Best-of-N: N samples per prompt, keep the one score_fn(responses, mask, prompts) likes best.
    Its KL is not measured: log N - (N-1)/N is the analytic value, an upper bound (Beirami et al. 2024)."""
    g = torch.Generator().manual_seed(seed)
    p = prompts(n, g).repeat_interleave(N, dim=0)
    resp, mask = sample(policy, p, g)
    s = score_fn(resp, mask, p).view(n, N)
    best = s.argmax(dim=1) + torch.arange(n) * N
    r = true_reward(resp[best], mask[best])
    return {"true_reward": float(r.mean()), "kl": _ppo.best_of_n_kl(N), "kl_is": "analytic upper bound", "N": N,
            "length": float(mask[best].sum(1).float().mean()), "by_length": reward_by_length(r, mask[best]),
            "samples": [decode(x) for x in resp[best][:4]]}
