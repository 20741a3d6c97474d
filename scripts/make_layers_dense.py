"""A saved M3-lite model with more of its first layers dense: the same weights, the indexers of the
layers that turn dense dropped (M3Lite.with_dense_layers). Fine-tune it afterwards, e.g.
scripts/gpu_phase2.sh OUT.safetensors SECONDS.

Usage (from the repository root): python scripts/make_layers_dense.py IN.safetensors OUT.safetensors --dense-layers N
"""
import argparse

import m3lite  # noqa: F401  (m3lite.env first)
from m3lite.model import M3Lite

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--dense-layers", type=int, required=True)
    args = parser.parse_args()
    model = M3Lite.from_pretrained(args.model).with_dense_layers(args.dense_layers)
    model.save(args.out)
    print(f"{args.out}: {model.config.dense_layers} dense layers of {model.config.layers}")
