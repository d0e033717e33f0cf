"""Chapter 8's controlled experiment over several seeds: the reward–KL frontier and reward hacking.

For each seed, from one SFT starting policy on the toy task of :mod:`plmkit.align.toy`
(known true reward r*):

1. preference pairs labelled by a Bradley–Terry annotator on r*; a reward model trained
   on them (held-out accuracy vs. the annotator's noise ceiling);
2. best-of-N against the reward model (N = 1 .. 32; KL = log N - (N-1)/N);
3. PPO against the reward model at several KL coefficients;
4. DPO on the same pairs at several beta;
5. GRPO (no value head, group-normalised advantages, k3 KL in the loss) against the same reward
   model at several beta, Dr. GRPO at one, and GRPO on the true reward r* itself: r* is a
   program that checks the answer, a *verifiable reward* (chapter 10's setting), so that run
   has no reward model to over-optimise;
6. reward hacking: pairs where the longer answer wins 80% of the time, a reward model
   trained on them, and PPO without a KL penalty against it.

Each run reports the true reward and the KL to the starting policy of fresh samples.
One labelled JSON file (command, UTC date, device, torch, git commit, seeds, settings)
is what ``solutions/08_alignment.ipynb`` loads:

    python experiments/alignment_frontier.py --out experiments/results/alignment_frontier.json
    python experiments/alignment_frontier.py --smoke --out /tmp/smoke.json          # seconds, for CI

Seeds are independent (every run re-seeds its own generators), so ``--jobs 3`` runs them in three
processes and writes the same numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plmkit import experiment  # noqa: E402
from plmkit.align import policy_gradient as pg  # noqa: E402
from plmkit.align import ppo, toy  # noqa: E402

FULL = dict(seeds=[0, 1, 2], sft_steps=150, n_pairs=2000, rm_epochs=3, ppo_updates=40, batch_size=64,
            kl_coefs=[0.3, 0.1, 0.03], betas=[0.03, 0.1, 0.3, 1.0], best_of=[1, 2, 4, 8, 16, 32],
            grpo_betas=[0.3, 0.1, 0.03], group_size=8, eval_n=512, length_bias=0.8)
SMOKE = dict(seeds=[0], sft_steps=5, n_pairs=64, rm_epochs=1, ppo_updates=2, batch_size=16,
             kl_coefs=[0.1], betas=[0.1], best_of=[1, 2], grpo_betas=[0.1], group_size=4, eval_n=32,
             length_bias=0.8)


def ppo_run(sft, score_fn, kl_coef, s, seed):
    """PPO from the SFT policy against score_fn; a curve of (update, score, KL, true reward) and a final evaluation."""
    torch.manual_seed(seed)
    policy, ref = ppo.PolicyWithValue(copy.deepcopy(sft)), copy.deepcopy(sft)
    config = ppo.PPOConfig(kl_coef=kl_coef, max_new_tokens=toy.MAX_NEW, stop_token=toy.EOS, pad_token_id=toy.PAD)
    history = ppo.train_ppo(policy, ref, toy.prompts, score_fn, config, updates=s["ppo_updates"],
                            batch_size=s["batch_size"], log_every=10, seed=seed,
                            eval_fn=lambda resp, mask: {"true_reward": float(toy.true_reward(resp, mask).mean())})
    return policy.lm, history


def grpo_run(sft, score_fn, beta, s, seed, loss_type="grpo", scale_rewards=True):
    """GRPO from the SFT policy: batches of batch_size / group_size prompts x group_size answers."""
    torch.manual_seed(seed)
    policy, ref = copy.deepcopy(sft), copy.deepcopy(sft)
    config = pg.GRPOConfig(beta=beta, group_size=s["group_size"], loss_type=loss_type, scale_rewards=scale_rewards,
                           max_new_tokens=toy.MAX_NEW, stop_token=toy.EOS, pad_token_id=toy.PAD)
    history = pg.train_grpo(policy, ref, toy.prompts, score_fn, config, updates=s["ppo_updates"],
                            prompts_per_batch=s["batch_size"] // s["group_size"], log_every=10, seed=seed,
                            eval_fn=lambda resp, mask: {"true_reward": float(toy.true_reward(resp, mask).mean())})
    return policy, history


def verifiable(responses, mask, prompts):
    """r* itself as the reward: a program that checks the answer (it ignores the prompt, as r* does)."""
    return toy.true_reward(responses, mask)


def one_seed(seed: int, s: dict) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    sft = toy.train_sft(steps=s["sft_steps"], seed=seed)
    base = toy.evaluate(sft, sft, n=s["eval_n"])
    pairs = toy.preference_pairs(sft, s["n_pairs"], seed=1000 + seed)
    held = toy.preference_pairs(sft, max(32, s["n_pairs"] // 4), seed=2000 + seed)
    rm, rm_stats = toy.train_reward_model(sft, pairs, held, epochs=s["rm_epochs"], seed=seed)
    score = toy.reward_fn(rm)
    runs = [{"method": "SFT", "param": None, **base}]
    for N in s["best_of"]:
        runs.append({"method": "best-of-N", "param": N, **toy.best_of_n(sft, score, N, n=max(16, s["eval_n"] // 2))})
    curves = {}
    for c in s["kl_coefs"] + [0.0]:
        lm, hist = ppo_run(sft, score, c, s, seed)
        runs.append({"method": "PPO", "param": c, **toy.evaluate(lm, sft, n=s["eval_n"])})
        curves[f"PPO kl_coef={c}"] = hist
    for beta in s["betas"]:
        lm = toy.train_dpo(sft, pairs, beta=beta, seed=seed)
        runs.append({"method": "DPO", "param": beta, **toy.evaluate(lm, sft, n=s["eval_n"])})
    for beta in s["grpo_betas"]:
        lm, hist = grpo_run(sft, score, beta, s, seed)
        runs.append({"method": "GRPO", "param": beta, **toy.evaluate(lm, sft, n=s["eval_n"])})
        curves[f"GRPO beta={beta}"] = hist
    beta = s["grpo_betas"][len(s["grpo_betas"]) // 2]
    lm, hist = grpo_run(sft, score, beta, s, seed, loss_type="dr_grpo", scale_rewards=False)
    runs.append({"method": "Dr. GRPO", "param": beta, **toy.evaluate(lm, sft, n=s["eval_n"])})
    lm, hist = grpo_run(sft, verifiable, beta, s, seed)
    runs.append({"method": "GRPO on r*", "param": beta, **toy.evaluate(lm, sft, n=s["eval_n"])})
    curves[f"GRPO on r* beta={beta}"] = hist
    # reward hacking: a spurious length feature in the labels
    biased = toy.preference_pairs(sft, s["n_pairs"], length_bias=s["length_bias"], seed=3000 + seed)
    rm_b, rm_b_stats = toy.train_reward_model(sft, biased, held, epochs=s["rm_epochs"], seed=seed)
    lm, hist = ppo_run(sft, toy.reward_fn(rm_b), 0.0, s, seed)
    hack = {"reward_model": rm_b_stats, "longer_chosen": biased["longer_chosen"], "curve": hist,
            "final": toy.evaluate(lm, sft, n=s["eval_n"])}
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "noise_ceiling": held["noise_ceiling"],
            "reward_model": rm_stats, "runs": runs, "ppo_curves": curves, "hacking": hack}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny settings, seconds (CI)")
    p.add_argument("--seeds", type=int, nargs="*", help="override the seeds")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes (same results)")
    args = p.parse_args(argv)
    s = dict(SMOKE if args.smoke else FULL)
    if args.seeds:
        s["seeds"] = args.seeds
    torch.set_num_threads(1)
    label = dict(experiment.label("experiments/alignment_frontier.py", argv if argv is not None else sys.argv[1:],
                                  "cpu", s["seeds"]), settings=s)
    if args.jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(s["seeds"]))) as pool:
            per_seed = pool.starmap(one_seed, [(seed, s) for seed in s["seeds"]])
    else:
        per_seed = [one_seed(seed, s) for seed in s["seeds"]]
    result = {"label": label, "seeds": per_seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
