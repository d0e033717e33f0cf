"""The call detector: forbidden calls are seen by identity, however they are reached."""
import functools
import sys

import pytest
import torch
import torch.nn.functional as F

from plmkit import basics
from plmkit import nn as pn
from plmkit.checks._guard import Guard, Rule, aten, code_objects

SOFTMAX = Rule("torch's softmax", [torch.softmax, F.softmax, aten._softmax])
PLMKIT = Rule("plmkit's softmax", [basics.softmax])
SDPA = Rule("`F.scaled_dot_product_attention`",
            [F.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu,
             aten.scaled_dot_product_attention, aten._scaled_dot_product_attention_math])


def seen(fn, *rules, allow=()):
    x = torch.randn(3, 4)
    with Guard(rules or (SOFTMAX, PLMKIT), allow) as g:
        fn(x)
    return g.seen


def own_softmax(x):
    z = x - x.amax(-1, keepdim=True)
    return z.exp() / z.exp().sum(-1, keepdim=True)


alias = torch.softmax
plmkit_alias = basics.softmax


def wrapper(x):
    return plmkit_alias(x)


class Holder:
    method = staticmethod(basics.softmax)


@pytest.mark.parametrize("fn, expected", [
    (lambda x: torch.softmax(x, -1), "torch's softmax"),
    (lambda x: F.softmax(x, -1), "torch's softmax"),
    (lambda x: x.softmax(-1), "torch's softmax"),
    (lambda x: torch.nn.Softmax(-1)(x), "torch's softmax"),
    (lambda x: alias(x, -1), "torch's softmax"),
    (functools.partial(torch.softmax, dim=-1), "torch's softmax"),
    (lambda x: getattr(torch, "soft" + "max")(x, -1), "torch's softmax"),
    (lambda x: getattr(x, "softmax")(-1), "torch's softmax"),
    (lambda x: basics.softmax(x), "plmkit's softmax"),
    (wrapper, "plmkit's softmax"),
    (functools.partial(basics.softmax, dim=-1), "plmkit's softmax"),
    (lambda x: Holder.method(x), "plmkit's softmax"),
    (lambda x: [*map(basics.softmax, [x])], "plmkit's softmax"),
])
def test_forbidden_calls_are_seen_however_reached(fn, expected):
    assert seen(fn) == [expected]


def test_own_code_is_not_flagged():
    assert seen(own_softmax) == []
    assert seen(lambda x: torch.log_softmax(x, -1)) == []        # not in these rules


def test_attention_through_sdpa_and_nn_multihead():
    q = torch.randn(1, 2, 3, 4)
    with Guard([SDPA]) as g:
        F.scaled_dot_product_attention(q, q, q)
    assert g.seen == ["`F.scaled_dot_product_attention`"]


def test_allowed_functions_may_use_anything_inside():
    def uses_plmkit_module(x):
        return pn.LayerNorm(4)(x)

    ln = Rule("torch's layer_norm", [F.layer_norm, aten.native_layer_norm, pn.norms.layer_norm])
    assert seen(uses_plmkit_module, ln) == ["torch's layer_norm"]
    assert seen(uses_plmkit_module, ln, allow=[pn.LayerNorm]) == []
    assert seen(lambda x: F.layer_norm(x, (4,)), ln, allow=[pn.LayerNorm]) == ["torch's layer_norm"]


def test_profile_hook_is_restored_and_switching_it_off_is_noticed():
    before = sys.getprofile()
    with Guard([SOFTMAX]) as g:
        pass
    assert sys.getprofile() is before and not g.switched_off
    with Guard([SOFTMAX]) as g:
        sys.setprofile(None)
        torch.softmax(torch.zeros(2), 0)
    assert g.switched_off
    assert sys.getprofile() is before


def test_code_objects_unwrap():
    assert code_objects(functools.partial(basics.softmax, dim=0)) == [basics.softmax.__code__]
    assert basics.softmax.__code__ not in code_objects(torch.softmax)
    assert pn.LayerNorm.forward.__code__ in code_objects(pn.LayerNorm)
    with pytest.raises(TypeError):
        Guard([Rule("nothing", [42])])


@torch.no_grad()
def decorated_reference(x):
    return x * 2


@torch.no_grad()
def innocent(x):
    return x + 1


def test_decorated_targets_are_unwrapped():
    """@torch.no_grad() functions share one wrapper code object: only the inner code may be watched."""
    rule = Rule("the decorated reference", [decorated_reference])
    assert seen(innocent, rule) == []
    assert seen(decorated_reference, rule) == ["the decorated reference"]
    assert seen(functools.partial(decorated_reference), rule) == ["the decorated reference"]
    assert seen(lambda x: decorated_reference(x), Rule("x", [torch.softmax]), allow=[innocent]) == []
    # allowing one decorated function must not allow every decorated function
    with Guard([rule], allow=[innocent]) as g:
        decorated_reference(torch.zeros(2))
    assert g.seen == ["the decorated reference"]


def test_c_methods_are_seen_when_called_on_an_object():
    from tokenizers import Tokenizer, models, trainers

    rule = Rule("Hugging Face training", [Tokenizer.train_from_iterator])
    tok, trainer = Tokenizer(models.BPE()), trainers.BpeTrainer(vocab_size=280, show_progress=False)
    with Guard([rule]) as g:
        method = tok.train_from_iterator
        method(["hello hello world"], trainer=trainer)
    assert g.seen == ["Hugging Face training"]
    with Guard([Rule("softmax method", [torch.Tensor.softmax])]) as g:
        torch.zeros(3).softmax(0)
        torch.zeros(3).exp()
    assert g.seen == ["softmax method"]


def test_a_whole_module_is_watched_without_importing_it():
    from plmkit.checks._guard import Module

    assert Module("no_such_package_xyz").path() is None
    rule = Rule("Hugging Face generation", [Module("transformers.generation")])
    with Guard([rule]) as g:
        from transformers.generation.logits_process import TopKLogitsWarper
        TopKLogitsWarper(top_k=2)(None, torch.randn(1, 5))
    assert g.seen == ["Hugging Face generation"]
    with Guard([rule]) as g:
        from transformers import PretrainedConfig
        PretrainedConfig()
    assert g.seen == []


def test_a_top_level_package_is_watched_after_it_was_imported():
    import transformers
    from plmkit.checks._guard import Module

    transformers.BertModel                    # loading a model class leaves a Path in the package's spec

    assert isinstance(Module("transformers").path(), str)
    rule = Rule("Hugging Face transformers", [Module("transformers")])
    with Guard([rule]) as g:
        transformers.PretrainedConfig()
    assert g.seen == ["Hugging Face transformers"]


def _in_pool(fn):
    from concurrent.futures import ThreadPoolExecutor
    return lambda x: ThreadPoolExecutor(1).submit(fn, x).result()


def _in_thread(fn):
    import threading

    def run(x):
        out = []
        t = threading.Thread(target=lambda: out.append(fn(x)))
        t.start()
        t.join()
        return out[0]
    return run


@pytest.mark.parametrize("fn, expected", [
    (_in_pool(basics.softmax), "plmkit's softmax"),
    (_in_thread(basics.softmax), "plmkit's softmax"),
    (_in_thread(lambda x: torch.softmax(x, -1)), "torch's softmax"),
    (_in_pool(lambda x: F.softmax(x, -1)), "torch's softmax"),
])
def test_the_reference_run_in_a_thread_is_seen(fn, expected):
    import threading

    before = threading.getprofile()
    assert seen(fn) == [expected]
    assert threading.getprofile() is before
