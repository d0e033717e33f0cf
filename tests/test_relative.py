"""T5 relative position buckets and bias against Hugging Face's T5Attention (transformers as pinned)."""
import doctest

import pytest
import torch
from transformers import T5Config as HFT5Config
from transformers.models.t5.modeling_t5 import T5Attention

import plmkit.nn.relative as relative
from plmkit.nn.relative import RelativePositionBias, relative_position_bucket

SETTINGS = [(32, 128), (16, 64), (8, 16), (32, 32), (64, 256), (6, 20), (10, 300)]


@pytest.mark.parametrize("num_buckets,max_distance", SETTINGS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_equal_hugging_face_over_all_distances(num_buckets, max_distance, bidirectional):
    d = torch.arange(-300, 301)
    ours = relative_position_bucket(d, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(d, bidirectional, num_buckets, max_distance)
    assert ours.dtype == torch.long
    assert torch.equal(ours, theirs)
    assert int(ours.min()) >= 0 and int(ours.max()) < num_buckets


def test_buckets_on_a_2d_grid_and_int32_input():
    rel = torch.arange(40)[None, :] - torch.arange(30)[:, None]
    assert torch.equal(relative_position_bucket(rel.int()), T5Attention._relative_position_bucket(rel))


def test_bucket_structure():
    d = torch.arange(-300, 301)
    enc = relative_position_bucket(d)
    assert torch.equal(enc[d <= 0].unique(), torch.arange(16))      # left of (or at) the query: lower half
    assert torch.equal(enc[d > 0].unique(), torch.arange(17, 32))   # right: upper half (16 = distance 0 unused)
    dec = relative_position_bucket(d, bidirectional=False)
    assert (dec[d >= 0] == 0).all() and torch.equal(dec[d <= 0].unique(), torch.arange(32))
    assert torch.equal(enc[(d.abs() < 8) & (d <= 0)], (-d[(d.abs() < 8) & (d <= 0)]))   # exact small distances
    assert (enc[d <= -128] == 15).all() and (enc[d >= 128] == 31).all()


@pytest.mark.parametrize("bad", [dict(num_buckets=3), dict(num_buckets=32.0), dict(max_distance=8),
                                 dict(max_distance=True)])
def test_bucket_settings_validated(bad):
    with pytest.raises(ValueError):
        relative_position_bucket(torch.arange(3), **bad)
    with pytest.raises(ValueError, match="relative_position"):
        relative_position_bucket(torch.arange(3.0))


def hf_attention(is_decoder, n_heads, num_buckets, max_distance, weight):
    cfg = HFT5Config(d_model=16, d_kv=4, num_heads=n_heads, relative_attention_num_buckets=num_buckets,
                     relative_attention_max_distance=max_distance, is_decoder=is_decoder)
    att = T5Attention(cfg, has_relative_attention_bias=True)
    with torch.no_grad():
        att.relative_attention_bias.weight.copy_(weight)
    return att


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bias_equals_hugging_face_compute_bias(bidirectional):
    torch.manual_seed(0)
    rpb = RelativePositionBias(3, num_buckets=8, max_distance=20, bidirectional=bidirectional)
    hf = hf_attention(not bidirectional, 3, 8, 20, rpb.weight.detach())
    assert torch.equal(rpb(torch.arange(7), 9), hf.compute_bias(7, 9))
    # decoding: queries at cache positions 5, 6 over 7 keys
    pos = torch.tensor([5, 6])
    assert torch.equal(rpb(pos, 7), hf.compute_bias(2, 7, cache_position=pos))


def test_bias_gradient_reaches_the_table():
    rpb = RelativePositionBias(2, num_buckets=8, max_distance=16)
    rpb(torch.arange(4), 4).sum().backward()
    assert rpb.weight.grad is not None and rpb.weight.grad.abs().sum() > 0


def test_bias_validates_input():
    rpb = RelativePositionBias(2)
    with pytest.raises(ValueError, match="query_positions"):
        rpb(torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="key_length"):
        rpb(torch.arange(3), 0)
    with pytest.raises(ValueError, match="n_heads"):
        RelativePositionBias(0)


def test_doctests():
    assert doctest.testmod(relative, raise_on_error=False).failed == 0
