"""How sharp is a model's attention? Per MSA layer and head, on test haystacks: the effective number
of tokens each query attends (exp of the attention's entropy), and the range of its logits, against
the largest logit QK-norm allows an aligned query and key: about sqrt(head_dim) times the product
of the two norms' mean gains. Per KV group: how many key blocks hold 90% of its attention mass.

Usage (from the repository root): python scripts/attention_sharpness.py [CHECKPOINT] [--length N]
[--examples N] [--out JSON]. Queries in the second half of each haystack are measured.
"""
import argparse
import json
import math

import torch

import m3lite  # noqa: F401  (m3lite.env first)
from m3lite import tasks
from m3lite.model import M3Lite
from m3lite.attention import block_attention_mass
from m3lite.attention.common import visible_mask
from m3lite.viz.training import blocks_holding, effective_tokens


def sharpness(q, k, head_dim):
    """(effective tokens [HQ], logit range [HQ]) over the second half of the queries of one example."""
    q, k = q[0].float().cpu(), k[0].float().cpu()                                       # [HQ, T, D], [HKV, T, D]
    T = q.shape[1]
    logits = q[:, T // 2:] @ k.repeat_interleave(q.shape[0] // k.shape[0], 0).transpose(-1, -2) / math.sqrt(head_dim)
    future = ~visible_mask(T, T, True, q.device)[T // 2:]
    spread = logits.masked_fill(future, float("-inf")).amax(-1) - logits.masked_fill(future, float("inf")).amin(-1)
    return effective_tokens(q, k, first_query=T // 2), spread.mean(-1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="data/checkpoints/m3lite-small.safetensors")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--out")
    args = p.parse_args(argv)
    model = M3Lite.from_pretrained(args.checkpoint).eval()
    c = model.config
    layers = [i for i, block in enumerate(model.blocks) if block.attn.sparse]
    effective, spread = torch.zeros(len(layers), c.heads), torch.zeros(len(layers), c.heads)
    needed = torch.zeros(len(layers), c.kv_heads)
    for seed in range(args.examples):
        example = tasks.haystack(args.length, seed, "test", key_modality="mixed")
        trace = []
        with torch.no_grad():
            model(example.tokens[None], example.media, attention="msa", trace=trace)
        for j, t in enumerate(trace):
            e, s = sharpness(t["q"], t["k"], c.head_dim)
            effective[j] += e / args.examples
            spread[j] += s / args.examples
            target = block_attention_mass(t["q"], t["k"], c.block_size, c.kv_heads)[0].cpu()
            needed[j] += blocks_holding(target, 0.9, first_query=args.length // 2) / args.examples
    rows = []
    for j, i in enumerate(layers):
        attn = model.blocks[i].attn
        gain = (attn.q_norm.weight.abs().mean() * attn.k_norm.weight.abs().mean()).item()
        rows.append(dict(layer=i, effective_tokens=[round(x, 1) for x in effective[j].tolist()],
                         logit_range=[round(x, 2) for x in spread[j].tolist()], qk_norm_gain=round(gain, 3),
                         blocks_for_90_percent=[round(x, 1) for x in needed[j].tolist()],
                         aligned_logit=round(gain * math.sqrt(c.head_dim), 2)))
        print(f"layer {i}: effective tokens per head {[round(x) for x in effective[j].tolist()]} of about "
              f"{3 * args.length // 4} visible; logit range {[round(x, 1) for x in spread[j].tolist()]}; "
              f"QK-norm gains {gain:.2f}: an aligned pair reaches about {gain * math.sqrt(c.head_dim):.1f}; "
              f"blocks of {c.block_size} holding 90% of a KV group's mass {[round(x, 1) for x in needed[j].tolist()]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, context_len=args.length, examples=args.examples, split="test",
                           queries="second half of each haystack", layers=rows), f, indent=1)


if __name__ == "__main__":
    main()
