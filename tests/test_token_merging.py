"""Token merging (issue 19) equals the ``tomesd`` package on a diffusers UNet with the same random weights.

The diffusers UNet gets the tiny model's weights through diffusers' own key converter; ``tomesd.apply_patch``
patches it, :func:`token_merging` patches ours, and one UNet call on the same latent must agree.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.diffusers_reference import build_diffusers_parts
from webui.models.token_merging import TokenMerging, bipartite_soft_matching_2d, token_merging

tomesd = pytest.importorskip("tomesd")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unets(tiny_components):
    return tiny_components.unet, build_diffusers_parts(tiny_components)["unet"]


def call_both(unets, latent, ratio, *, use_rand=False, seed=0):
    ours, ref = unets
    torch.manual_seed(0)
    t = torch.tensor([500.0] * latent.shape[0])
    context = torch.randn(latent.shape[0], 77, 128)
    tomesd.apply_patch(ref, ratio=ratio, use_rand=use_rand)
    # tomesd forks the global RNG for its random destinations; give it the generator ours gets
    ref._tome_info["args"]["generator"] = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            expected = ref(latent, t, encoder_hidden_states=context).sample
    finally:
        tomesd.remove_patch(ref)
    with (
        torch.no_grad(),
        token_merging(ours, TokenMerging(ratio, use_rand=use_rand), torch.Generator().manual_seed(seed)),
    ):
        got = ours(latent, t, context)
    with torch.no_grad():
        exact = ours(latent, t, context)
    return got, expected, exact


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
@pytest.mark.parametrize("size", [(16, 16), (12, 20), (13, 11)])
def test_equals_tomesd(unets, ratio, size):
    latent = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(1))
    got, expected, exact = call_both(unets, latent, ratio)
    assert (got - expected).abs().max() < 1e-4
    assert (got - exact).abs().max() > 1e-3  # merging changed the result: the comparison is not vacuous


def test_random_destinations_equal_tomesd_with_the_same_generator(unets):
    latent = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    got, expected, _ = call_both(unets, latent, 0.5, use_rand=True, seed=7)
    assert (got - expected).abs().max() < 1e-4
    other, _, _ = call_both(unets, latent, 0.5, use_rand=True, seed=8)
    assert (other - got).abs().max() > 1e-4  # the generator decides the destinations


def test_ratio_zero_is_bit_identical_and_the_patch_is_undone(unets):
    ours, _ = unets
    latent = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t, context = torch.tensor([900.0, 900.0]), torch.randn(2, 77, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = ours(latent, t, context)
        with token_merging(ours, TokenMerging(0.0)):
            zero = ours(latent, t, context)
        with token_merging(ours, TokenMerging(0.5)):
            merged = ours(latent, t, context)
        after = ours(latent, t, context)
    assert torch.equal(zero, before) and torch.equal(after, before)
    assert not torch.equal(merged, before)
    assert all(getattr(m, "token_merge", None) is None for m in ours.modules())
    assert not ours._forward_pre_hooks


def test_merge_then_unmerge_keeps_unmerged_tokens_and_counts():
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(5))
    merge, unmerge = bipartite_soft_matching_2d(x, 8, 8, 2, 2, r=20)
    merged = merge(x)
    assert merged.shape == (2, 44, 8)
    restored = unmerge(merged)
    unchanged = (restored == x).all(dim=-1).sum(dim=1)
    assert (unchanged >= 64 - 20 - 16).all()  # the 28 unmerged sources are copied back exactly (destinations averaged)


def test_ratio_outside_range_is_refused(unets):
    with pytest.raises(ValueError, match="0.75"), token_merging(unets[0], TokenMerging(0.8)):
        pass
