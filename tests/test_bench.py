import json

import pytest
import torch

import m3lite as m3
from m3lite.bench import __main__ as bench_main
from m3lite.bench import cpu


def test_benchmark_inputs_are_a_valid_causal_selection():
    q, k, v, sel = cpu.make_inputs(300, HQ=4, HKV=2, D=8, BS=32, K=3)
    own = torch.arange(300) // 32
    assert sel.shape == (1, 2, 300, 3) and (sel == own[:, None].int()).any(-1).all()
    assert (sel <= own[:, None]).all()


def test_benchmark_methods_compute_the_same_attention_when_everything_is_selected():
    q, k, v, _ = cpu.make_inputs(128, HQ=4, HKV=2, D=8, BS=32, K=4)
    everything = torch.arange(4, dtype=torch.int32).expand(1, 2, 128, 4).contiguous()
    outs = [fn(q, k, v, everything) for fn in cpu.methods(BS=32).values()]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_cpu_benchmark_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    bench_main.main(["cpu", "--lengths", "256", "--repeats", "1", "--json", str(path)])
    printed = capsys.readouterr().out
    assert "sdpa_dense_causal" in printed and "sparse_kv_torch" in printed
    record = json.loads(path.read_text())
    assert record["machine"]["torch"] == torch.__version__
    rows = {r["method"]: r for r in record["rows"]}
    assert rows["sdpa_dense_causal"]["speedup_vs_sdpa"] == 1.0
    assert all(r["ms"] > 0 and r["T"] == 256 for r in rows.values())


def test_peak_memory_sees_a_large_allocation():
    peak = cpu.peak_memory_mb(lambda: torch.ones(64 * 2**20 // 4).sum())          # 64 MB
    assert peak is None or 48 <= peak < 256


def test_prefill_benchmark_refuses_to_run_without_a_gpu():
    import pytest
    if m3.env.HAS_CUDA:
        pytest.skip("this machine has a GPU: the benchmark would run for minutes")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_main.main(["prefill", "--cases", "0"])


def test_attended_tokens_counts_visible_pairs():
    from conftest import random_selection, token_mask
    from m3lite.bench.prefill import attended_tokens
    sel = random_selection(1, 2, 70, 70, 16, 3, seed=4)
    assert attended_tokens(sel, 70, 70, 16) == int(token_mask(sel, 70, 70, 16, True).sum())


def test_kv_work_list_covers_every_entry_once():
    from m3lite.kernels.sparse_kv import work_list
    offsets = torch.tensor([0, 5, 5, 12, 13])                           # 13 entries of at most 16
    rows, starts = work_list(offsets, 4, most_entries=16)
    assert len(rows) == 4 + 16 // 4                                     # room for the most there can be
    assert rows[:5].tolist() == [0, 0, 2, 2, 3] and starts[:5].tolist() == [0, 4, 5, 9, 12]
    assert (starts[5:] >= offsets[rows[5:] + 1]).all()                  # the spares have nothing to do


def test_decode_benchmark_naive_peer_attends_the_selected_blocks():
    from m3lite.bench.decode import naive_gather_attend
    g = torch.Generator().manual_seed(0)
    B, HQ, HKV, S, D, BS = 2, 4, 2, 64, 8, 16
    q, k, v = torch.randn(B, HQ, 1, D, generator=g), torch.randn(B, HKV, S, D, generator=g), torch.randn(B, HKV, S, D, generator=g)
    lens = torch.tensor([64, 41])
    sel = torch.tensor([[[3, 0, -1]], [[2, 1, -1]]], dtype=torch.int32)[:, None].expand(B, HKV, 1, 3)
    out = naive_gather_attend(q, k, v, sel, lens, BS)
    for b, length in enumerate(lens.tolist()):
        ref = m3.sparse_attention(q[b:b + 1], k[b:b + 1, :, :length], v[b:b + 1, :, :length], sel[b:b + 1],
                                  block_size=BS, backend="torch")
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(m3.env.HAS_CUDA, reason="checks the refusal on a machine without a GPU")
def test_decode_benchmark_refuses_without_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_main.main(["decode"])


def test_selection_recall_counts_the_reference_blocks_kept():
    from m3lite.bench.decode import selection_recall
    reference = torch.tensor([[3, 1, -1], [0, 2, 4]])
    other = torch.tensor([[1, 5, 3], [4, 7, 8]])
    assert abs(selection_recall(reference, other) - (1.0 + 1 / 3) / 2) < 1e-6
