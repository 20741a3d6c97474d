"""What every kernel shares: which inputs the Triton backend takes, and launch helpers."""
import torch

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
    """An output buffer for a kernel to fill: uninitialised, or NaN while POISON is on."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
