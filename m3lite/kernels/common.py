"""What every kernel shares: which inputs the Triton backend takes, and launch helpers."""
import torch
import triton
import triton.language as tl

from .. import env

# Interpreting on CPU: bf16/fp16 arithmetic is wrong there, so kernels upcast loaded blocks.
UPCAST = env.INTERPRET
HEAD_DIMS = (16, 32, 64, 128, 256)
LOG2E = 1.4426950408889634   # kernels use exp2: exp(x) = exp2(x * LOG2E)


def next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def check_device(*tensors):
    """Triton needs CUDA tensors, or CPU tensors while the interpreter is on."""
    for t in tensors:
        if t.is_cuda:
            continue
        if not env.INTERPRET:
            raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {t.device}; "
                             "use backend='torch'")


def check_head_dim(D, name="head dim"):
    if D not in HEAD_DIMS:
        raise ValueError(f"backend='triton' supports a {name} in {HEAD_DIMS}, got {D}; backend='torch' takes any")


def check_block_size(block_size):
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"backend='triton' needs block_size a power of two >= 16, got {block_size}; "
                         "backend='torch' takes any positive block size")


def check_forward_only(*tensors):
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError("backend='triton' is forward only and these inputs require grad; "
                         "use backend='torch' to train (or run under torch.no_grad())")

MAX_BLOCK_SIZE = 256   # one block is one [rows, BS] tile of scores held on chip

# Tests set this to fill every output with NaN before a kernel runs, so an element a kernel
# forgets to write fails loudly instead of passing on leftover memory.
POISON = False


def new_output(shape, dtype, device):
    """An output buffer for a kernel to fill: uninitialised, or NaN (the lowest int) while POISON is on."""
    if POISON:
        fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def online_softmax_step(m_i, l_i, acc, s, b_v):
    """Fold one tile of scores s [M, N] (log2 units, -inf = masked) and values b_v [N, D] into the
    running max m_i [M], sum l_i [M] and output acc [M, D]; returns the new (m_i, l_i, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)                                     # rescale what came before
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v)
    return m_new, l_i, acc


@triton.jit
def online_softmax_finish(m_i, l_i, acc):
    """(out [M, D], lse [M] in natural log) from the running state; zeros and -inf for empty rows."""
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    lse = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    return acc / l_safe[:, None], lse
