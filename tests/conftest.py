"""Shared helpers: an independent masked-dense oracle and random inputs."""
import math

import pytest
import torch


def token_mask(sel, T, S, block_size, causal):
    """Explicit [B, HI, T, S] mask: token s is allowed for query t if its block was selected."""
    B, HI, _, K = sel.shape
    mask = torch.zeros(B, HI, T, S, dtype=torch.bool)
    for b in range(B):
        for h in range(HI):
            for t in range(T):
                for j in sel[b, h, t].tolist():
                    if j >= 0:
                        mask[b, h, t, j * block_size:(j + 1) * block_size] = True
    if causal:
        mask &= torch.arange(S) <= (torch.arange(T) + S - T)[:, None]
    return mask


def masked_reference(q, k, v, mask, scale=None):
    """Attention in float64 with an explicit token mask [B, HI, T, S]; returns (out, lse)."""
    B, HQ, T, D = q.shape
    HKV, HI = k.shape[1], mask.shape[1]
    scale = D ** -0.5 if scale is None else scale
    kk = k.double().repeat_interleave(HQ // HKV, 1)
    vv = v.double().repeat_interleave(HQ // HKV, 1)
    m = mask.repeat_interleave(HQ // HI, 1)
    s = (q.double() @ kk.transpose(-1, -2) * scale).masked_fill(~m, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ vv, lse


def random_selection(B, HI, T, S, block_size, K, seed=0, causal=True):
    """Own block first, then random earlier (or any, non-causal) distinct blocks; -1 padded."""
    g = torch.Generator().manual_seed(seed)
    NB = math.ceil(S / block_size)
    sel = torch.full((B, HI, T, K), -1, dtype=torch.int32)
    for b in range(B):
        for h in range(HI):
            for t in range(T):
                own = (S - T + t) // block_size if causal else NB - 1
                others = [j for j in torch.randperm(own + 1, generator=g).tolist() if j != own]
                ids = ([own] + others)[:K]
                sel[b, h, t, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
    return sel


def rel_error(out, ref):
    """Relative error in float64: |out - ref| / |ref| (Frobenius norms)."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def randn(*shape, seed=0, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


@pytest.fixture
def poison_kernel_outputs(monkeypatch):
    """Kernel outputs start as NaN (or the lowest int), so an element a kernel forgets to write fails."""
    from m3lite.kernels import common
    monkeypatch.setattr(common, "POISON", True)


# -- notebook exercise checkers: what every checker must do

def stub(*args):
    raise NotImplementedError  # your code here


def checker_accepts(check, solution, capsys):
    assert check(solution) is True
    assert capsys.readouterr().out.startswith("✓")


def checker_rejects(check, wrong, capsys, hint=""):
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out


def checker_reports_a_stub(check, capsys):
    assert check(stub) is False
    out = capsys.readouterr().out
    assert out.startswith("…") and out.count("\n") == 1


def checker_survives_a_raise(check, capsys):
    def broken(*args):
        raise IndexError("oops")
    assert check(broken) is False
    assert "IndexError" in capsys.readouterr().out


def exercise_checker_tests(checks):
    """The four tests every notebook's exercise checkers get. `checks` lists (checker, solution, a
    typical wrong answer, the hint the checker must give for it). A test module assigns the four
    returned functions to test names, so that pytest collects them there."""
    ids = [f"{check.__name__}-{wrong.__name__}" for check, _, wrong, _ in checks]
    unique = sorted({c for c, _, _, _ in checks}, key=lambda c: c.__name__)

    @pytest.mark.parametrize("check, solution, wrong, hint", checks, ids=ids)
    def accepts_the_solution(check, solution, wrong, hint, capsys):
        checker_accepts(check, solution, capsys)

    @pytest.mark.parametrize("check, solution, wrong, hint", checks, ids=ids)
    def rejects_a_typical_mistake_and_names_it(check, solution, wrong, hint, capsys):
        checker_rejects(check, wrong, capsys, hint)

    @pytest.mark.parametrize("check", unique, ids=lambda c: c.__name__)
    def reports_an_unfinished_stub(check, capsys):
        checker_reports_a_stub(check, capsys)

    @pytest.mark.parametrize("check", unique, ids=lambda c: c.__name__)
    def survives_an_answer_that_raises_or_returns_nonsense(check, capsys):
        checker_survives_a_raise(check, capsys)
        assert check(lambda *args: "nonsense") is False
        assert capsys.readouterr().out.startswith("✗")

    return (accepts_the_solution, rejects_a_typical_mistake_and_names_it, reports_an_unfinished_stub,
            survives_an_answer_that_raises_or_returns_nonsense)


def shape_name(shape):
    """Test id of a sparse-attention case (B, HQ, HKV, HI, T, S, D, BS, K)."""
    return "B{}-HQ{}-HKV{}-HI{}-T{}-S{}-D{}-BS{}-K{}".format(*shape)


def sparse_inputs(shape, seed=0, dtype=torch.float32, causal=True, device="cpu"):
    """Random q, k, v on `device` and a random CPU selection for a case (B, HQ, HKV, HI, T, S, D, BS, K)."""
    B, HQ, HKV, HI, T, S, D, BS, K = shape
    q, k, v = (randn(*size, seed=seed + i).to(device=device, dtype=dtype)
               for i, size in enumerate(((B, HQ, T, D), (B, HKV, S, D), (B, HKV, S, D))))
    return q, k, v, random_selection(B, HI, T, S, BS, K, seed=seed, causal=causal)
