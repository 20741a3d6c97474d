"""python -m m3lite.bench {cpu,prefill,decode} [options]: run a benchmark and print its table."""
import argparse

from . import cpu, decode, prefill


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m m3lite.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    cpu.add_arguments(sub.add_parser("cpu", help="dense SDPA vs the kv-order torch reference on CPU"))
    prefill.add_arguments(sub.add_parser("prefill", help="MSA prefill kernels vs SDPA and FlexAttention (GPU)"))
    decode.add_arguments(sub.add_parser("decode", help="MSA decode step vs dense SDPA decode (GPU)"))
    args = parser.parse_args(argv)
    {"cpu": cpu.main, "prefill": prefill.main, "decode": decode.main}[args.which](args)


if __name__ == "__main__":
    main()
