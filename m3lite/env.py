"""The one place that decides where m3lite runs.

Importing this module (every `import m3lite` does, first) chooses the device and, when no CUDA GPU
is present, turns on the Triton interpreter (`TRITON_INTERPRET=1`) so that the Triton kernels run on
CPU tensors. The variable must be set before any `@triton.jit` function is defined, which is why
nothing else in the package asks `torch.cuda.is_available()`.
"""
import importlib.util
import os
import sys
import warnings

import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        warnings.warn("triton was imported before m3lite on a machine without a CUDA GPU, so its interpreter "
                      "is off and m3lite's Triton kernels will fail; import m3lite first (or set "
                      "TRITON_INTERPRET=1 before importing triton)", stacklevel=2)
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def device() -> torch.device:
    """The device m3lite uses by default: the CUDA GPU when there is one, else the CPU."""
    return DEVICE


def describe() -> str:
    """One line saying where m3lite runs, for the top of a notebook or a benchmark."""
    where = torch.cuda.get_device_name() if HAS_CUDA else "CPU"
    mode = "Triton interpreter" if INTERPRET else "compiled Triton"
    return f"m3lite on {where} (torch {torch.__version__}, kernels via {mode})"
