"""Input validation shared by every public function: clear errors that name the argument."""
import torch

from .. import env

BACKENDS = ("auto", "torch", "triton")
ORDERS = ("query", "kv")


def tensor(x, name, rank=4, layout="[B, H, T, D]"):
    """Check that `x` is a tensor of the given rank; return its shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must be a {rank}-D tensor {layout}, got shape {tuple(x.shape)}")
    return x.shape


def floating(x, name):
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def scale(value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"scale must be positive, got {value}")


def flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def choice(value, name, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def same(a, b, name_a, name_b):
    """Check that two tensors share dtype and device."""
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} must have the dtype of {name_a} ({a.dtype}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{name_b} must be on the device of {name_a} ({a.device}), got {b.device}")


def causal_lengths(causal, T, S):
    if causal and T > S:
        raise ValueError(f"causal attention needs T <= S (queries are the last T of S tokens), got T={T}, S={S}")


def qkv(q, k, v, causal, scale_value):
    """Validate q, k, v as the API contract says (README, "The API"); return (B, HQ, HKV, T, S, D)."""
    B, HQ, T, D = tensor(q, "q", layout="[B, HQ, T, D]")
    Bk, HKV, S, Dk = tensor(k, "k", layout="[B, HKV, S, D]")
    tensor(v, "v", layout="[B, HKV, S, D]")
    floating(q, "q")
    same(q, k, "q", "k")
    same(q, v, "q", "v")
    if Bk != B:
        raise ValueError(f"k must have the batch size of q ({B}), got {Bk}")
    if Dk != D:
        raise ValueError(f"k must have the head dim of q ({D}), got {Dk}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if HQ % HKV:
        raise ValueError(f"the query heads of q ({HQ}) must be a multiple of the KV heads of k ({HKV})")
    if S == 0 or T == 0:
        raise ValueError(f"q and k need at least one token, got T={T}, S={S}")
    flag(causal, "causal")
    causal_lengths(causal, T, S)
    scale(scale_value)
    return B, HQ, HKV, T, S, D


def index_qk(iq, ik, HKV=None):
    """Validate index queries iq [B, HI, T, DI] and shared index keys ik [B, 1, S, DI]."""
    B, HI, T, DI = tensor(iq, "iq", layout="[B, HI, T, DI]")
    Bk, one, S, DIk = tensor(ik, "ik", layout="[B, 1, S, DI]")
    floating(iq, "iq")
    same(iq, ik, "iq", "ik")
    if one != 1:
        raise ValueError(f"ik must have exactly one (shared) index-key head, got {one}")
    if Bk != B:
        raise ValueError(f"ik must have the batch size of iq ({B}), got {Bk}")
    if DIk != DI:
        raise ValueError(f"ik must have the index dim of iq ({DI}), got {DIk}")
    if S == 0 or T == 0:
        raise ValueError(f"iq and ik need at least one token, got T={T}, S={S}")
    if HKV is not None and HKV % HI:
        raise ValueError(f"the KV heads of k ({HKV}) must be a multiple of the index heads of iq ({HI})")
    return B, HI, T, S, DI


def selection(sel, B, HKV, T, num_blocks, device):
    """Validate a block selection int [B, HI, T, K] with ids in [-1, NB)."""
    Bs, HI, Ts, K = tensor(sel, "sel", layout="[B, HI, T, K]")
    if sel.dtype.is_floating_point or sel.dtype.is_complex or sel.dtype == torch.bool:
        raise TypeError(f"sel must hold integer block ids (int32 or int64), got {sel.dtype}")
    if sel.device != device:
        raise ValueError(f"sel must be on the device of q ({device}), got {sel.device}")
    if Bs != B or Ts != T:
        raise ValueError(f"sel must be [B={B}, HI, T={T}, K], got shape {tuple(sel.shape)}")
    if HI == 0 or HKV % HI:
        raise ValueError(f"the KV heads of k ({HKV}) must be a multiple of the selection heads of sel ({HI})")
    if K == 0:
        raise ValueError("sel must select at least one slot per query (K >= 1)")
    lo, hi = torch.aminmax(sel)                                    # one pass over sel
    lo, hi = int(lo), int(hi)
    if lo < -1 or hi >= num_blocks:
        raise ValueError(f"sel ids must lie in [-1, {num_blocks}) (NB = ceil(S / block_size)), got [{lo}, {hi}]")
    return HI, K


def scores(s):
    """Validate block scores float [B, HI, T, NB]."""
    tensor(s, "scores", layout="[B, HI, T, NB]")
    floating(s, "scores")
    if s.shape[-1] == 0:
        raise ValueError("scores must have at least one block (NB >= 1)")


def backend(value, *tensors):
    """Resolve `backend` for these inputs: "auto" is Triton for CUDA tensors that need no gradient."""
    choice(value, "backend", BACKENDS)
    if value == "triton" and not env.HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package (Linux); use backend='torch'")
    if value == "auto":
        on_gpu = bool(tensors) and tensors[0].is_cuda and env.HAS_TRITON
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return "triton" if on_gpu and not needs_grad else "torch"
    return value
