"""Run every kernel once at a small, awkward size and check it against its twin.

Meant for `compute-sanitizer python3 -m m3lite.kernels.smoke` on a GPU (and quick on a CPU).
"""
import torch

import m3lite as m3
from m3lite import kernels
from m3lite.bench.prefill import relative_error


def main():
    dev = m3.env.device()
    g = torch.Generator(device=dev).manual_seed(0)
    B, HQ, HKV, T, S, D, BS, K = 2, 8, 2, 200, 300, 64, 32, 3
    q, k, v = (torch.randn(B, h, n, D, device=dev, generator=g, dtype=torch.bfloat16)
               for h, n in ((HQ, T), (HKV, S), (HKV, S)))
    iq = torch.randn(B, HKV, T, 32, device=dev, generator=g, dtype=torch.bfloat16)
    ik = torch.randn(B, 1, S, 32, device=dev, generator=g, dtype=torch.bfloat16)
    out, _ = kernels.dense_attention(q, k, v, True, None)
    report = {"flash": relative_error(out, m3.dense_attention(q.float(), k.float(), v.float()))}
    scores = m3.block_scores(iq, ik, block_size=BS, backend="triton")
    twin_scores = m3.block_scores(iq.float(), ik.float(), block_size=BS, backend="torch")
    finite = torch.isfinite(twin_scores)
    report["block_scores"] = relative_error(scores[finite], twin_scores[finite])
    sel = m3.select_blocks(scores, top_k=K, backend="triton")
    report["select_blocks_agree"] = float(torch.equal(sel.sort(-1).values,
                                                      m3.select_blocks(scores, top_k=K, backend="torch").sort(-1).values))
    wide = torch.randn(B, HKV, 16, 300, device=dev, generator=g)      # blocks enough for the two-level top-k
    report["select_2_levels_agree"] = float(torch.equal(kernels.indexer.select_blocks(wide, 16, True),
                                                          kernels.indexer.select_blocks(wide, 16, True, group=1)))
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=BS, backend="torch")
    for order in ("query", "kv"):
        out = m3.sparse_attention(q, k, v, sel, block_size=BS, order=order, backend="triton")
        report[f"sparse_{order}"] = relative_error(out, twin)
    out, _ = kernels.sparse_attention_kv(q, k, v, sel, BS, True, D ** -0.5, tile_rows=0)
    report["sparse_kv_no_tiles"] = relative_error(out, twin)
    own = (torch.arange(T, device=dev) + S - T) // BS                 # neighbouring blocks: whole tiles share them
    near = torch.stack([own - i for i in range(K)], -1).clamp(min=0).int().expand(B, HKV, T, K)
    out = m3.sparse_attention(q, k, v, near, block_size=BS, order="kv", backend="triton")
    report["sparse_kv_neighbours"] = relative_error(out, m3.sparse_attention(q.float(), k.float(), v.float(), near,
                                                                             block_size=BS, backend="torch"))
    lengths = [S, 77]                                                 # decode: ragged, 2 new tokens each
    out = m3.decode_attention(q[:, :, :2], k, v, iq[:, :, :2], ik, lengths, block_size=BS, top_k=K, backend="triton")
    twin = m3.decode_attention(q[:, :, :2].float(), k.float(), v.float(), iq[:, :, :2].float(), ik.float(), lengths,
                               block_size=BS, top_k=K, backend="torch")
    report["decode"] = relative_error(out, twin)
    from m3lite.attention.decode import quantize_index_keys
    ik_fp8, ik_scale = quantize_index_keys(ik)
    out = m3.decode_attention(q[:, :, :2], k, v, iq[:, :, :2], ik_fp8, lengths, block_size=BS, top_k=K,
                              backend="triton", ik_scale=ik_scale)
    twin = m3.decode_attention(q[:, :, :2].float(), k.float(), v.float(), iq[:, :, :2].float(), ik_fp8, lengths,
                               block_size=BS, top_k=K, backend="torch", ik_scale=ik_scale)
    report["decode_fp8_keys"] = relative_error(out, twin)
    for name, value in report.items():
        print(f"{name:22s} {value:.2e}")
    bad = [n for n, e in report.items() if (e != 1.0 if n.endswith("agree") else not e < 1e-2)]
    if bad:
        raise SystemExit(f"smoke check failed: {bad}")
    print("smoke check passed")


if __name__ == "__main__":
    main()
