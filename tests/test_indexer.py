import math
import resource
import subprocess
import sys

import pytest
import torch

import m3lite as m3
import m3lite.attention.indexer as indexer
from conftest import randn


def brute_block_scores(iq, ik, block_size, causal):
    """Token scores with an explicit mask, then the max of each block; -inf where nothing is visible."""
    B, HI, T, DI = iq.shape
    S = ik.shape[2]
    s = iq.double() @ ik.double().transpose(-1, -2) / math.sqrt(DI)              # [B, HI, T, S]
    if causal:
        s = s.masked_fill(torch.arange(S) > (torch.arange(T) + S - T)[:, None], -math.inf)
    NB = math.ceil(S / block_size)
    return torch.stack([s[..., j * block_size:(j + 1) * block_size].amax(-1) for j in range(NB)], -1)


@pytest.mark.parametrize("B,HI,T,S,DI,BS", [(1, 2, 64, 64, 8, 16), (2, 3, 50, 50, 16, 16),
                                            (1, 1, 37, 100, 8, 32), (2, 2, 1, 45, 4, 8), (1, 4, 100, 100, 8, 128)])
@pytest.mark.parametrize("causal", [True, False])
def test_block_scores_match_brute_force(B, HI, T, S, DI, BS, causal):
    iq, ik = randn(B, HI, T, DI, seed=1), randn(B, 1, S, DI, seed=2)
    scores = m3.block_scores(iq, ik, block_size=BS, causal=causal)
    assert scores.dtype == torch.float32 and scores.shape == (B, HI, T, math.ceil(S / BS))
    torch.testing.assert_close(scores.double(), brute_block_scores(iq, ik, BS, causal), atol=1e-5, rtol=1e-5)


def test_block_scores_in_small_chunks_are_the_same(monkeypatch):
    iq, ik = randn(2, 2, 70, 8, seed=3), randn(2, 1, 70, 8, seed=4)
    whole = m3.block_scores(iq, ik, block_size=16)
    monkeypatch.setattr(indexer, "SCORE_CHUNK_ELEMENTS", 2 * 2 * 70 * 3)     # 3 queries per chunk
    torch.testing.assert_close(m3.block_scores(iq, ik, block_size=16), whole)


def test_block_scores_scale_and_half_precision():
    iq, ik = randn(1, 2, 40, 8, seed=5), randn(1, 1, 40, 8, seed=6)
    torch.testing.assert_close(m3.block_scores(iq, ik, block_size=8, scale=1.0),
                               m3.block_scores(iq, ik, block_size=8) * math.sqrt(8))
    half = m3.block_scores(iq.bfloat16(), ik.bfloat16(), block_size=8)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, m3.block_scores(iq.bfloat16().float(), ik.bfloat16().float(), block_size=8))


def check_selection_contract(scores, sel, top_k, local):
    B, HI, T, NB = scores.shape
    assert sel.dtype == torch.int32 and sel.shape == (B, HI, T, top_k)
    for row_scores, row in zip(scores.reshape(-1, NB), sel.reshape(-1, top_k).tolist()):
        visible = [j for j in range(NB) if row_scores[j] > -math.inf]
        valid = [j for j in row if j >= 0]
        assert row == valid + [-1] * (top_k - len(valid))                   # -1 only at the tail
        assert len(set(valid)) == len(valid) == min(top_k, len(visible))   # distinct, as many as possible
        assert set(valid) <= set(visible)                                   # never an invisible block
        forced = [max(visible)] if (local and visible) else []
        assert set(forced) <= set(valid)
        others = sorted((row_scores[j].item() for j in visible if j not in forced), reverse=True)
        chosen = sorted((row_scores[j].item() for j in valid if j not in forced), reverse=True)
        assert chosen == others[:len(chosen)]                               # the best of the rest


@pytest.mark.parametrize("top_k", [1, 2, 3, 7, 10])
@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("T,S", [(50, 50), (20, 70), (1, 33)])
def test_select_blocks_contract(top_k, local, T, S):
    scores = m3.block_scores(randn(2, 2, T, 8, seed=7), randn(2, 1, S, 8, seed=8), block_size=8)
    sel = m3.select_blocks(scores, top_k=top_k, local=local)
    check_selection_contract(scores, sel, top_k, local)
    if local:                                                                # causal: the own block is forced
        own = (torch.arange(T) + S - T) // 8
        assert (sel == own[:, None].int()).any(-1).all()


def test_select_blocks_non_causal_and_all_invisible_rows():
    scores = randn(1, 1, 4, 6, seed=9)
    scores[0, 0, 1] = -math.inf                                              # a row with nothing visible
    sel = m3.select_blocks(scores, top_k=3)
    assert sel[0, 0, 1].tolist() == [-1, -1, -1]
    assert (sel[0, 0, [0, 2, 3]] == 5).any(-1).all()                         # non-causal: last block forced
    check_selection_contract(scores, sel, 3, True)


def test_indexer_module_shapes_rope_and_grad():
    torch.manual_seed(0)
    idx = m3.Indexer(dim=32, num_index_heads=2, index_dim=16, rope_dim=8)
    x = torch.randn(2, 20, 32)
    iq, ik = idx(x)
    assert iq.shape == (2, 2, 20, 16) and ik.shape == (2, 1, 20, 16)
    assert torch.allclose(ik.pow(2).mean(-1), torch.ones(2, 1, 20), atol=1e-4)   # RMS-normed keys (rope keeps norms)
    iq0, ik0 = idx(x, positions=torch.arange(20) + 7)                        # rope moves only rope dims
    torch.testing.assert_close(iq0[..., 8:], iq[..., 8:])
    assert not torch.allclose(iq0[..., :8], iq[..., :8])
    scores = iq @ ik.transpose(-1, -2)                                       # relative positions: shift-invariant
    torch.testing.assert_close(iq0 @ ik0.transpose(-1, -2), scores, atol=1e-4, rtol=1e-4)
    (iq.sum() + ik.sum()).backward()
    assert idx.wq.weight.grad is not None and idx.wk.weight.grad is not None
    with pytest.raises(ValueError, match="rope_dim"):
        m3.Indexer(dim=32, index_dim=16, rope_dim=5)


def test_block_scores_16k_never_holds_all_token_scores():
    """T = S = 16384 with 4 index heads: all token scores would take 4 GiB; the peak stays far below."""
    code = ("import resource, torch, m3lite as m3; g = torch.Generator().manual_seed(0); "
            "iq = torch.randn(1, 4, 16384, 32, generator=g); ik = torch.randn(1, 1, 16384, 32, generator=g); "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "s = m3.block_scores(iq, ik, block_size=128); assert s.shape == (1, 4, 16384, 128); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra_mb = float(done.stdout.split()[-1])
    assert extra_mb < 1024, f"block_scores at 16K took {extra_mb:.0f} MB above its inputs"
