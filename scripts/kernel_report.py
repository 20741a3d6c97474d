"""Compile a kernel for sm_90a on a machine without a GPU and print ptxas's resource report.

Registers, spills and shared memory answer most "why is it slow" questions before any device time
is spent. Use the Triton version of the GPU machine for numbers that match it, e.g.
    pip install --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36:. TRITON_INTERPRET=0 python scripts/kernel_report.py kv [KEY=VALUE ...]
KEY=VALUE sets a constexpr or launch option (num_warps, num_stages). Shapes are the M3 benchmark's.
"""
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_report(fn, pointers, values, constexprs, num_warps, num_stages):
    """pointers: {name: dtype}; values: {name: int value (drives Triton's specialisation)}."""
    names = fn.arg_names
    signature, attrs = {}, {}
    for i, n in enumerate(names):
        if n in constexprs:
            signature[n] = "constexpr"
        elif n in pointers:
            signature[n] = pointers[n]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(values[n], float):
            signature[n] = "fp32"
        elif values[n] == 1:                       # Triton specialises ints equal to 1 into constants
            signature[n], constexprs = "constexpr", {**constexprs, n: 1}
        else:
            signature[n] = "i32"
            if values[n] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(n),): v for n, v in constexprs.items()},
                    attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    if os.environ.get("DUMP"):
        open(os.environ["DUMP"] + ".ttgir", "w").write(kernel.asm["ttgir"])
        open(os.environ["DUMP"] + ".ptx", "w").write(kernel.asm["ptx"])
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    out = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", f.name, "-o", "/dev/null"],
                         capture_output=True, text=True).stderr
    lines = [line.split("info    : ")[-1] for line in out.splitlines() if "Used" in line or "spill" in line]
    return f"smem {kernel.metadata.shared} B; wgmma {kernel.asm['ptx'].count('wgmma.mma_async')}; " + "; ".join(lines)


def kv_report(options):
    from m3lite.kernels import sparse_kv as kv
    pointers = dict(Q="*bf16", K="*bf16", V="*bf16", ENTRIES="*i32", WORK_ROW="*i64",
                    WORK_START="*i64", OFFSETS="*i64", O_PART="*bf16", LSE_PART="*fp32")
    T, D, BS = 65536, 128, 128
    values = dict(stride_qb=64 * T * D, stride_qh=T * D, stride_qt=D, stride_kb=4 * T * D, stride_kh=T * D,
                  stride_ks=D, T=T, S=T, NB=T // BS, HI=4, R=1, CHUNK=4, ENTRIES_PER_PROGRAM=64,
                  qk_scale=0.1)
    constexprs = dict(G=16, SLOTS=16, CAUSAL=True, BS=BS, BLOCK_M=64, HEAD_DIM=D, UPCAST=False)
    return kv._sparse_kv_fwd, pointers, values, constexprs


if __name__ == "__main__":
    import m3lite  # noqa: F401  (m3lite.env first)
    which, *pairs = sys.argv[1:] or ["kv"]
    fn, pointers, values, constexprs = {"kv": kv_report}[which]({})
    launch = dict(num_warps=4, num_stages=1)
    for pair in pairs:
        key, value = pair.split("=")
        value = int(value) if value.lstrip("-").isdigit() else value == "True" if value in ("True", "False") else value
        (launch if key in launch else constexprs if key in constexprs else values)[key] = value
    print(which, {**constexprs, **launch}, compile_report(fn, pointers, values, constexprs, **launch))
