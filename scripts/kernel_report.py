"""Compile the KV-outer kernel or the tile pass for sm_90a on a machine without a GPU and print ptxas's report.

Registers, spills and shared memory answer most "why is it slow" questions before any device time
is spent. Use the Triton version of the GPU machine for numbers that match it:
    pip install --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36:. python scripts/kernel_report.py {kv|tile} [KEY=VALUE ...]
KEY=VALUE sets a constexpr (kv: G, SLOTS, BS, BLOCK_M, HEAD_DIM, CAUSAL, UPCAST; tile: also TILE,
BLOCK_N), a launch option (num_warps, num_stages) or a run-time int (T, CHUNK, ...), as the
launcher would: for kv, CHUNK defaults to BLOCK_M // G (`plan()`); for tile, TILE to BLOCK_M // G. Triton specialises run-time ints (equal to 1, divisible by 16), so
their values can change the code. The other shapes are the M3 benchmark's at 64K.
"""
import os
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"           # compile, even on a machine without a GPU

import m3lite  # noqa: E402,F401  (m3lite.env first, as everywhere)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


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
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    run = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"ptxas failed (is this the GPU machine's Triton? see the usage above):\n{run.stderr}")
    lines = [line.split("info    : ")[-1].strip() for line in run.stderr.splitlines() if "Used" in line or "spill" in line]
    return f"smem {kernel.metadata.shared} B; wgmma {kernel.asm['ptx'].count('wgmma.mma_async')}; " + "; ".join(lines)


def kv_kernel():
    """The KV-outer partials kernel, its pointer types, run-time values and constexprs (M3, 64K)."""
    from m3lite.kernels import sparse_kv as kv
    pointers = dict(Q="*bf16", K="*bf16", V="*bf16", ENTRIES="*i32", ROWS="*i64", STARTS="*i64", OFFSETS="*i64",
                    O_PART="*bf16", LSE_PART="*fp32")
    T, D = 65536, 128
    values = dict(stride_qb=64 * T * D, stride_qh=T * D, stride_qt=D, stride_kb=4 * T * D, stride_kh=T * D,
                  stride_ks=D, T=T, S=T, NB=T // 128, HI=4, R=1, qk_scale=0.1)
    constexprs = dict(G=16, SLOTS=16, CAUSAL=True, BS=128, BLOCK_M=64, HEAD_DIM=D, UPCAST=False)
    return kv._sparse_kv_fwd, pointers, values, constexprs


def tile_kernel():
    """The tile pass, its pointer types, run-time values and constexprs (M3, 64K, 256-row tiles)."""
    from m3lite.kernels import sparse_shared as sh
    pointers = dict(Q="*bf16", K="*bf16", V="*bf16", SHARED="*i32", O_PART="*bf16", LSE_PART="*fp32", O="*bf16",
                    LSE="*fp32", ENABLED="*i32")
    T, D = 65536, 128
    values = dict(stride_qb=64 * T * D, stride_qh=T * D, stride_qt=D, stride_kb=4 * T * D, stride_kh=T * D,
                  stride_ks=D, stride_ob=64 * T * D, stride_oh=T * D, stride_ot=D, T=T, S=T, HI=4, R=1,
                  NUM_TILES=T // 16, qk_scale=0.1)
    constexprs = dict(G=16, SLOTS=16, SLOTS_POW2=16, CAUSAL=True, BS=128, BLOCK_N=128, BLOCK_M=256, HEAD_DIM=D,
                      UPCAST=False)
    return sh._tile_pass_fwd, pointers, values, constexprs


def main(argv):
    if not argv or argv[0] not in ("kv", "tile") or any("=" not in a for a in argv[1:]):
        raise SystemExit(__doc__)
    if argv[0] == "tile":
        return report_tile(argv[1:])
    fn, pointers, values, constexprs = kv_kernel()
    launch = dict(num_warps=4, num_stages=1)
    for key, value in parse(argv[1:]):
        target = launch if key in launch else constexprs if key in constexprs else values if key in values or key in (
            "CHUNK", "ENTRIES_PER_PROGRAM") else None
        if target is None:
            raise SystemExit(f"unknown KEY {key!r}: one of {sorted([*launch, *constexprs, *values, 'CHUNK'])}")
        target[key] = value
    values.setdefault("CHUNK", constexprs["BLOCK_M"] // constexprs["G"])
    values.setdefault("ENTRIES_PER_PROGRAM", values["CHUNK"] * 64)            # plan()'s 64 chunks a program
    print("kv", {**constexprs, **launch, "CHUNK": values["CHUNK"], "ENTRIES_PER_PROGRAM": values["ENTRIES_PER_PROGRAM"]})
    print(compile_report(fn, pointers, values, constexprs, **launch))


def report_tile(pairs):
    fn, pointers, values, constexprs = tile_kernel()
    launch = dict(num_warps=8, num_stages=2)
    for key, value in parse(pairs):
        target = launch if key in launch else constexprs if key in (*constexprs, "TILE") else values if key in values \
            else None
        if target is None:
            raise SystemExit(f"unknown KEY {key!r}: one of {sorted([*launch, *constexprs, *values, 'TILE'])}")
        target[key] = value
    constexprs.setdefault("TILE", constexprs["BLOCK_M"] // constexprs["G"])
    values["NUM_TILES"] = values["T"] // constexprs["TILE"]
    print("tile", {**constexprs, **launch})
    print(compile_report(fn, pointers, values, constexprs, **launch))


def parse(pairs):
    """KEY=VALUE strings -> (key, int, bool or str value) pairs."""
    for pair in pairs:
        key, value = pair.split("=", 1)
        yield key, int(value) if value.lstrip("-").isdigit() else value == "True" if value in ("True", "False") else value


if __name__ == "__main__":
    main(sys.argv[1:])
