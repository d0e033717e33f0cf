"""The Trainer against a hand-written PyTorch loop, and its schedule against PyTorch's own schedulers."""
import pytest
import torch

from plmkit.models import GPT, GPTConfig
from plmkit.objectives.clm import random_windows
from plmkit.train import Trainer, lm_loss, param_groups, warmup_cosine

V = 23


def tiny_gpt(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2, dropout=dropout))


def batches(n, B=4, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randint(V, (B, T + 1), generator=g)
        out.append((w[:, :-1], w[:, 1:]))
    return out


def test_warmup_cosine_matches_torch_schedulers():
    lr, warmup, total, floor = 0.1, 5, 40, 0.1
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=floor * lr)],
        milestones=[warmup])
    for step in range(total):
        assert abs(opt.param_groups[0]["lr"] - lr * warmup_cosine(step, warmup_steps=warmup, max_steps=total,
                                                                  min_lr_ratio=floor)) < 1e-9, step
        opt.step()
        sched.step()
    assert warmup_cosine(total + 10, warmup_steps=warmup, max_steps=total, min_lr_ratio=floor) == floor


def test_trainer_equals_a_hand_written_adamw_loop():
    data = batches(6)
    hp = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model = tiny_gpt()
    trainer = Trainer(model, data, max_steps=12, warmup_steps=3, min_lr_ratio=0.2, grad_clip=0.5,
                      precision="fp32", progress=False, device="cpu", log_every=1, **hp)
    history = trainer.fit()

    ref = tiny_gpt()
    opt = torch.optim.AdamW(param_groups(ref, hp["weight_decay"]), lr=hp["lr"], betas=hp["betas"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup_steps=3, max_steps=12,
                                                                           min_lr_ratio=0.2))
    losses, clipped = [], 0
    for step in range(12):
        x, y = data[step % len(data)]
        loss = torch.nn.functional.cross_entropy(ref(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        clipped += torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5).item() > 0.5
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert clipped > 0                                       # the clip was active
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert history["loss"] == pytest.approx(losses, abs=1e-6)
    assert history["lr"][-1] == pytest.approx(3e-3 * 0.2)


def test_gradient_accumulation_equals_one_big_batch():
    small = batches(8, B=2)
    big = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]))
           for i in range(0, 8, 2)]
    a, b = tiny_gpt(), tiny_gpt()
    Trainer(a, small, max_steps=4, grad_accum_steps=2, precision="fp32", progress=False, device="cpu").fit()
    Trainer(b, big, max_steps=4, precision="fp32", progress=False, device="cpu").fit()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_gradient_accumulation_averages_per_token_over_uneven_micro_batches():
    """Micro-batches with different numbers of loss-carrying tokens: the step is the per-token mean of the
    whole batch (the sum of token losses over all tokens), not the mean of the micro-batches' means."""
    small = [(x, y.clone()) for x, y in batches(8, B=2)]   # y is a view of the inputs' windows
    for i, (_, y) in enumerate(small):
        y[:, : 1 + 3 * (i % 3)] = -100                      # 1, 4 or 7 masked targets per row
    big = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]))
           for i in range(0, 8, 2)]
    a, b = tiny_gpt(), tiny_gpt()
    ha = Trainer(a, small, max_steps=4, grad_accum_steps=2, precision="fp32", progress=False, device="cpu",
                 log_every=1).fit()
    hb = Trainer(b, big, max_steps=4, precision="fp32", progress=False, device="cpu", log_every=1).fit()
    assert ha["loss"] == pytest.approx(hb["loss"], abs=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


@pytest.mark.parametrize("source", ["function", "iterable"])
def test_resuming_from_a_checkpoint_continues_exactly(tmp_path, source):
    ids = torch.randint(V, (500,), generator=torch.Generator().manual_seed(1))

    def data():  # draws from the global RNG, which the checkpoint saves
        return random_windows(ids, 12, 4) if source == "function" else batches(5)

    def make(model):
        src = data if source == "function" else data()
        return Trainer(model, src, max_steps=10, warmup_steps=2, eval_data=batches(2, seed=9), eval_every=4,
                       precision="fp32", progress=False, device="cpu", log_every=2)

    torch.manual_seed(123)
    straight = make(tiny_gpt(dropout=0.1))
    torch.manual_seed(123)
    straight.fit()

    torch.manual_seed(123)
    first = make(tiny_gpt(dropout=0.1))
    torch.manual_seed(123)
    first.fit(steps=6)
    first.save_checkpoint(tmp_path / "ckpt" / "run.pt")
    torch.manual_seed(999)                                   # disturb the RNG: the checkpoint must restore it
    resumed = make(tiny_gpt(seed=5, dropout=0.1))
    resumed.load_checkpoint(tmp_path / "ckpt" / "run.pt")
    assert resumed.step == 6
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert straight.history == resumed.history


def test_training_lowers_the_loss_and_evaluates_periodically():
    text = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 40)             # a pattern a tiny model can learn
    model = tiny_gpt()
    trainer = Trainer(model, lambda: random_windows(text, 12, 8), eval_data=[random_windows(text, 12, 8)],
                      max_steps=60, lr=1e-2, warmup_steps=5, eval_every=20, log_every=10, progress=True,
                      device="cpu")
    history = trainer.fit()
    assert history["step"] == [10, 20, 30, 40, 50, 60]
    assert history["eval_step"] == [20, 40, 60]
    assert history["eval_loss"][-1] < 0.3 < history["loss"][0]
    assert trainer.evaluate() == pytest.approx(history["eval_loss"][-1])


def test_target_eval_loss_stops_training_early():
    trainer = Trainer(tiny_gpt(), batches(3), eval_data=batches(1), max_steps=50, eval_every=5,
                      target_eval_loss=100.0, progress=False, device="cpu")
    trainer.fit()
    assert trainer.reached_target and trainer.step == 5


def test_bf16_autocast_runs_matrix_work_in_bfloat16():
    model = tiny_gpt()
    dtypes = []
    model.blocks[0].ffn.fc1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = Trainer(model, batches(2), max_steps=2, precision="bf16", progress=False, device="cpu")
    trainer.fit()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in model.parameters())          # master weights stay float32
    assert torch.isfinite(torch.tensor(trainer.history["loss"])).all()


def test_compiled_model_trains_and_checkpoints_plain_names(tmp_path):
    model = tiny_gpt()
    trainer = Trainer(model, batches(2), max_steps=2, compile="eager", progress=False, device="cpu")
    trainer.fit()
    trainer.save_checkpoint(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
    assert set(state) == set(model.state_dict())


def test_custom_loss_function():
    def loss_fn(model, batch):
        return lm_loss(model, batch) * 0.0 + model.wte.weight.square().mean()   # shrink the embeddings
    model = tiny_gpt()
    before = model.wte.weight.detach().norm().item()
    Trainer(model, batches(1), loss_fn=loss_fn, max_steps=20, lr=1e-2, weight_decay=0.0, progress=False,
            device="cpu").fit()
    assert model.wte.weight.norm().item() < before


def test_invalid_arguments_raise_value_errors(tmp_path):
    model, data = tiny_gpt(), batches(1)
    bad = [dict(max_steps=0), dict(lr=0.0), dict(grad_accum_steps=0), dict(warmup_steps=11),
           dict(min_lr_ratio=1.5), dict(grad_clip=0.0), dict(precision="int8"), dict(eval_every=5),
           dict(target_eval_loss=1.0), dict(checkpoint_every=5), dict(betas=(0.9, 1.0)), dict(log_every=0),
           dict(compile=3)]
    for kw in bad:
        with pytest.raises(ValueError):
            Trainer(model, data, **{"max_steps": 10, "progress": False, "device": "cpu", **kw})
    with pytest.raises(ValueError):
        Trainer("not a model", data, max_steps=1)
    with pytest.raises(ValueError):
        Trainer(model, 42, max_steps=1)
    with pytest.raises(ValueError, match="pair"):
        Trainer(model, [torch.zeros(2, 3, dtype=torch.long)], max_steps=1, progress=False, device="cpu").fit()
    with pytest.raises(ValueError, match="no batches"):
        Trainer(model, [], max_steps=1, progress=False, device="cpu").fit()
    with pytest.raises(ValueError, match="checkpoint"):
        Trainer(model, data, max_steps=1, progress=False, device="cpu").load_checkpoint(tmp_path / "none.pt")


def test_docstring_examples():
    import doctest

    import plmkit.train
    failed, attempted = doctest.testmod(plmkit.train)
    assert attempted > 0 and failed == 0


# ----------------------------------------------------------------------------- hooks for RL and preference loops

def test_loss_fn_metrics_enter_history_averaged_like_the_loss():
    data = batches(4)

    def loss_fn(model, batch):
        loss = lm_loss(model, batch)
        x, y = batch
        acc = (model(x).argmax(-1) == y).float().mean()
        return loss, {"accuracy": acc, "constant": 2.0}

    model = tiny_gpt()
    trainer = Trainer(model, data, loss_fn=loss_fn, eval_data=batches(3, seed=4), eval_every=3, max_steps=6,
                      log_every=3, grad_accum_steps=2, precision="fp32", progress=False, device="cpu")
    # The hand-made reference: the same model, the same batches, the same steps.
    ref = tiny_gpt()
    opt = Trainer(ref, data, max_steps=6, grad_accum_steps=2, precision="fp32", progress=False, device="cpu")
    expected = []
    for step in range(6):
        accs = []
        for j in range(2):
            x, y = data[(2 * step + j) % 4]
            with torch.no_grad():
                accs.append((ref(x).argmax(-1) == y).float().mean().item())
        expected.append(sum(accs) / 2)
        opt.train_step()
    history = trainer.fit()
    assert history["step"] == [3, 6]
    assert history["accuracy"] == pytest.approx([sum(expected[:3]) / 3, sum(expected[3:]) / 3], abs=1e-6)
    assert history["constant"] == [2.0, 2.0]
    assert len(history["eval_accuracy"]) == len(history["eval_step"]) == 2
    assert history["eval_constant"] == [2.0, 2.0]
    assert set(trainer.last_eval_metrics) == {"accuracy", "constant"}

    for bad in ({"loss": 1.0}, {"eval_x": 1.0}, {"v": torch.ones(2)}):
        t = Trainer(tiny_gpt(), data, loss_fn=lambda m, b, bad=bad: (lm_loss(m, b), bad), max_steps=1,
                    progress=False, device="cpu")
        with pytest.raises(ValueError, match="metric"):
            t.fit()
    t = Trainer(tiny_gpt(), data, loss_fn=lambda m, b: (lm_loss(m, b), {}, 1), max_steps=1, progress=False,
                device="cpu")
    with pytest.raises(ValueError, match="pair"):
        t.fit()


def test_backward_and_optimizer_step_drive_a_custom_loop_like_fit():
    data = batches(6)
    kw = dict(max_steps=6, warmup_steps=2, grad_clip=0.3, precision="fp32", progress=False, device="cpu")
    a, b = tiny_gpt(), tiny_gpt()
    Trainer(a, data, **kw).fit()
    trainer = Trainer(b, data, **kw)
    norms = []
    for step in range(6):                                 # e.g. a PPO epoch over stored samples
        b.train()
        trainer.backward(lm_loss(b, data[step]))
        norms.append(trainer.optimizer_step())
    assert trainer.step == 6 and all(p.grad is None for p in b.parameters())
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert all(isinstance(n, torch.Tensor) and n.ndim == 0 and n > 0 for n in norms)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(3e-4 * 0.1)
    with pytest.raises(ValueError, match="scalar"):
        trainer.backward(torch.ones(2, requires_grad=True))


def test_frozen_reference_stays_in_eval_mode_without_gradients():
    class PolicyWithReference(torch.nn.Module):          # a DPO-style setting: the reference inside the model
        def __init__(self):
            super().__init__()
            self.policy = tiny_gpt(dropout=0.2)
            self.ref = tiny_gpt(seed=1, dropout=0.2)

        def forward(self, x):
            return self.policy(x)

    model = PolicyWithReference()
    ref_before = {k: v.clone() for k, v in model.ref.state_dict().items()}
    modes = []

    def loss_fn(m, batch):
        x, y = batch
        modes.append((m.policy.training, m.ref.training))
        ref_logits = m.ref(x)                             # dropout would make these differ between calls
        assert torch.equal(ref_logits, m.ref(x))
        return lm_loss(m, batch) + 0.0 * ref_logits.sum(), {"ref_mean": ref_logits.mean()}

    trainer = Trainer(model, batches(3), loss_fn=loss_fn, frozen=[model.ref], eval_data=batches(1),
                      eval_every=2, max_steps=4, precision="fp32", progress=False, device="cpu")
    trainer.fit()
    assert (True, False) in modes and (False, False) in modes and all(not r for _, r in modes)
    assert all(not p.requires_grad for p in model.ref.parameters())
    assert all(p.device == trainer.device for p in model.ref.parameters())
    for k, v in model.ref.state_dict().items():
        assert torch.equal(v, ref_before[k]), k
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.ref.parameters()}
    assert optimised == {id(p) for p in model.policy.parameters()}
    with pytest.raises(ValueError, match="frozen"):
        Trainer(model, batches(1), frozen=[model], max_steps=1, progress=False, device="cpu")


def test_evaluation_reads_the_device_once(monkeypatch):
    trainer = Trainer(tiny_gpt(), batches(1), eval_data=batches(5, seed=3), max_steps=1, progress=False,
                      device="cpu")
    reads = []        # (int() is left alone: the CPU-only token-id check reads ids with it, never on a GPU)
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name: (reads.append(_n), _o(self, *a))[1])
    loss = trainer.evaluate()
    monkeypatch.undo()
    assert reads == ["tolist"]
    with torch.no_grad():
        manual = sum(lm_loss(trainer.model, b).item() for b in batches(5, seed=3)) / 5
    assert loss == pytest.approx(manual, abs=1e-6)
