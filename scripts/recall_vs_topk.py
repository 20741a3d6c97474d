"""How much of the attention the indexer's selection keeps as top_k grows, against the best
possible selection of as many blocks (the oracle), on the shipped checkpoint's test haystacks.

Usage (from the repository root): python scripts/recall_vs_topk.py [CHECKPOINT] [--lengths ...] [--top-k ...] [--examples N] [--out JSON]
Changing top_k changes the MSA forward too (later layers see more blocks), so each top_k is its
own model run; the weights stay the same.
"""
import argparse
import dataclasses
import json
import time

import torch

import m3lite  # noqa: F401  (m3lite.env first)
from m3lite import evals, tasks
from m3lite.model import M3Lite


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="data/checkpoints/m3lite-small.safetensors")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--top-k", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--out")
    args = p.parse_args(argv)
    base = M3Lite.from_pretrained(args.checkpoint).eval()
    rows = []
    for length in args.lengths:
        examples = [tasks.haystack(length, s, "test", key_modality="mixed") for s in range(args.examples)]
        blocks = -(-length // base.config.block_size)
        for top_k in args.top_k:
            model = M3Lite(dataclasses.replace(base.config, top_k=top_k)).eval()
            model.load_state_dict(base.state_dict())
            start = time.time()
            with torch.no_grad():
                recall = evals.indexer_recalls(model, examples, attentions=("msa", "oracle"), ats=("all",))
            rows.append(dict(context_len=length, blocks=blocks, top_k=top_k, trained=recall["msa", "all"],
                             oracle=recall["oracle", "all"], n=args.examples))
            print(f"{length:5d} tokens ({blocks:3d} blocks) top_k={top_k:2d}: trained "
                  + " ".join(f"{r:.3f}" for r in recall["msa", "all"]) + "  best possible "
                  + " ".join(f"{r:.3f}" for r in recall["oracle", "all"]) + f"  ({time.time() - start:.0f} s)",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, split="test", key_modality="mixed", positions="all",
                           per_layer="the MSA layers in order (1, 2, 3 for the shipped model)", rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
