"""Every bad input gets a clear error that names the argument (README, "The API")."""
import pytest
import torch

import m3lite as m3

q, k, v = torch.randn(1, 4, 32, 8), torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8)
iq, ik = torch.randn(1, 2, 32, 4), torch.randn(1, 1, 32, 4)
sel = torch.zeros(1, 2, 32, 2, dtype=torch.int32)


def sparse(**changes):
    args = dict(q=q, k=k, v=v, sel=sel, block_size=16)
    args.update(changes)
    return m3.sparse_attention(**args)


def msa(**changes):
    args = dict(q=q, k=k, v=v, iq=iq, ik=ik, block_size=16, top_k=2)
    args.update(changes)
    return m3.msa_attention(**args)


SPARSE_CASES = [
    ("q rank", dict(q=q[0]), ValueError, "q must be a 4-D"),
    ("k not a tensor", dict(k=k.tolist()), TypeError, "k must be a torch.Tensor"),
    ("q integer", dict(q=q.long()), TypeError, "q must have a floating dtype"),
    ("k dtype", dict(k=k.double()), TypeError, "k must have the dtype of q"),
    ("v dtype", dict(v=v.half()), TypeError, "v must have the dtype of q"),
    ("heads do not divide", dict(q=torch.randn(1, 3, 32, 8)), ValueError, "multiple of the KV heads"),
    ("head dims differ", dict(k=torch.randn(1, 2, 32, 16)), ValueError, "head dim"),
    ("v shape", dict(v=torch.randn(1, 2, 31, 8)), ValueError, "v must have the shape of k"),
    ("batch differs", dict(k=torch.randn(2, 2, 32, 8), v=torch.randn(2, 2, 32, 8)), ValueError, "batch size"),
    ("causal with T > S", dict(k=k[:, :, :16], v=v[:, :, :16]), ValueError, "T <= S"),
    ("sel float", dict(sel=sel.float()), TypeError, "sel must hold integer block ids"),
    ("sel bool", dict(sel=sel.bool()), TypeError, "sel must hold integer block ids"),
    ("sel rank", dict(sel=sel[0]), ValueError, "sel must be a 4-D"),
    ("sel id too large", dict(sel=torch.full_like(sel, 2)), ValueError, r"sel ids must lie in \[-1, 2\)"),
    ("sel id below -1", dict(sel=torch.full_like(sel, -2)), ValueError, "sel ids must lie in"),
    ("sel heads do not divide HKV", dict(sel=torch.zeros(1, 3, 32, 2, dtype=torch.int32)), ValueError,
     "multiple of the selection heads"),
    ("sel tokens", dict(sel=sel[:, :, :10]), ValueError, "sel must be"),
    ("sel K = 0", dict(sel=sel[..., :0]), ValueError, "at least one slot"),
    ("block_size 0", dict(block_size=0), ValueError, "block_size must be positive"),
    ("block_size float", dict(block_size=16.0), TypeError, "block_size must be an int"),
    ("scale negative", dict(scale=-1.0), ValueError, "scale must be positive"),
    ("order", dict(order="keys"), ValueError, "order must be one of"),
    ("backend", dict(backend="cuda"), ValueError, "backend must be one of"),
    ("causal not bool", dict(causal="yes"), TypeError, "causal must be a bool"),
]


@pytest.mark.parametrize("label,changes,error,message", SPARSE_CASES, ids=[c[0] for c in SPARSE_CASES])
def test_sparse_attention_rejects(label, changes, error, message):
    with pytest.raises(error, match=message):
        sparse(**changes)


MSA_CASES = [
    ("ik has two heads", dict(ik=torch.randn(1, 2, 32, 4)), ValueError, "exactly one"),
    ("index dims differ", dict(ik=torch.randn(1, 1, 32, 6)), ValueError, "index dim"),
    ("index heads do not divide HKV", dict(iq=torch.randn(1, 3, 32, 4)), ValueError, "index heads of iq"),
    ("iq tokens differ from q", dict(iq=iq[:, :, :8]), ValueError, "iq and ik must match q and k"),
    ("ik dtype", dict(ik=ik.double()), TypeError, "ik must have the dtype of iq"),
    ("top_k 0", dict(top_k=0), ValueError, "top_k must be positive"),
    ("top_k bool", dict(top_k=True), TypeError, "top_k must be an int"),
]


@pytest.mark.parametrize("label,changes,error,message", MSA_CASES, ids=[c[0] for c in MSA_CASES])
def test_msa_attention_rejects(label, changes, error, message):
    with pytest.raises(error, match=message):
        msa(**changes)


def test_indexer_functions_reject():
    with pytest.raises(ValueError, match="iq must be a 4-D"):
        m3.block_scores(iq[0], ik)
    with pytest.raises(ValueError, match="T <= S"):
        m3.block_scores(iq, ik[:, :, :8])
    with pytest.raises(ValueError, match="block_size must be positive"):
        m3.block_scores(iq, ik, block_size=-4)
    with pytest.raises(TypeError, match="scores must have a floating dtype"):
        m3.select_blocks(torch.zeros(1, 1, 4, 4, dtype=torch.long), top_k=2)
    with pytest.raises(ValueError, match="top_k must be positive"):
        m3.select_blocks(torch.zeros(1, 1, 4, 4), top_k=0)
    with pytest.raises(TypeError, match="local must be a bool"):
        m3.select_blocks(torch.zeros(1, 1, 4, 4), top_k=2, local=1)


def test_dense_attention_rejects():
    with pytest.raises(ValueError, match="multiple of the KV heads"):
        m3.dense_attention(torch.randn(1, 3, 8, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4))
    with pytest.raises(ValueError, match="T <= S"):
        m3.tiled_attention(torch.randn(1, 2, 9, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4))
    with pytest.raises(ValueError, match="block_q must be positive"):
        m3.tiled_attention(q, k, v, block_q=0)


def test_non_causal_allows_more_queries_than_keys():
    out = m3.sparse_attention(q, k[:, :, :20], v[:, :, :20], sel, block_size=16, causal=False)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_failed_call_changes_nothing():
    before = [x.clone() for x in (q, k, v, sel)]
    with pytest.raises(ValueError):
        sparse(sel=torch.full_like(sel, 5))
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v, sel)))
