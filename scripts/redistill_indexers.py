"""Train only the indexers of a frozen checkpoint by the dense warm-up KL, and watch recall.

Can more distillation, or bigger indexers, lift a layer whose trained indexer keeps less than the
best possible selection? The model is frozen; its indexers are either trained on (the default) or
replaced by fresh ones of another size (--fresh, --index-dim, --index-rope-dim). Each step: 4
training haystacks of one length drawn from 256..1024 tokens, dense attention, the KL over every
visible block (`distill="warmup"`), Adam with a cosine learning rate. Every --every steps: recall
per MSA layer (all positions) on 8 test haystacks of 256 and of 1024 tokens.

Usage (from the repository root): python scripts/redistill_indexers.py [CHECKPOINT] [--steps N]
[--lr LR] [--fresh --index-dim D --index-rope-dim R] [--save PATH]
"""
import argparse
import dataclasses
import math
import random
import time

import torch

import m3lite  # noqa: F401  (m3lite.env first)
from m3lite import evals, tasks
from m3lite.model import M3Lite


def with_indexers(base, fresh, index_dim, index_rope_dim):
    """A copy of `base` whose parameters are frozen except its indexers' (fresh ones if asked)."""
    if not fresh:
        model = M3Lite(base.config)
        model.load_state_dict(base.state_dict())
    else:
        torch.manual_seed(0)
        model = M3Lite(dataclasses.replace(base.config, index_dim=index_dim, index_rope_dim=index_rope_dim))
        kept = {name: w for name, w in base.state_dict().items() if ".indexer." not in name}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        assert all(".indexer." in name for name in missing) and not unexpected
    for name, p in model.named_parameters():
        p.requires_grad_(".indexer." in name)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="data/checkpoints/m3lite-small-sharp.safetensors")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--fresh", action="store_true", help="new indexers instead of the trained ones")
    p.add_argument("--index-dim", type=int, default=None)
    p.add_argument("--index-rope-dim", type=int, default=None)
    p.add_argument("--save", default=None)
    args = p.parse_args(argv)
    base = M3Lite.from_pretrained(args.checkpoint)
    index_dim = args.index_dim or base.config.index_dim
    rope = base.config.index_rope_dim if args.index_rope_dim is None else args.index_rope_dim
    model = with_indexers(base, args.fresh, index_dim, rope)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    tests = {n: [tasks.haystack(n, s, "test", key_modality="mixed") for s in range(8)] for n in (256, 1024)}

    def recall():
        model.eval()
        with torch.no_grad():
            return "  ".join(f"{n}: " + " ".join(f"{r:.3f}" for r in evals.indexer_recall(model, examples))
                             for n, examples in tests.items())

    print(f"{'fresh' if args.fresh else 'trained'} indexers, index_dim {index_dim}, index_rope_dim {rope}, "
          f"{sum(p.numel() for p in params)} parameters; recall per MSA layer at 256 and 1024 tokens")
    print(f"step 0: {recall()}", flush=True)
    rng, start = random.Random(0), time.time()
    for step in range(args.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        length = rng.choice([256, 384, 512, 768, 1024])
        examples = [tasks.haystack(length, 90_000 + 4 * step + i, "train", key_modality="mixed") for i in range(4)]
        tokens, media, _ = tasks.collate(examples)
        _, kl = model(tokens, media, attention="dense", distill="warmup")
        optimizer.zero_grad()
        kl.backward()
        optimizer.step()
        if (step + 1) % args.every == 0:
            print(f"step {step + 1}: KL {kl.item():.4f}  {recall()}  ({time.time() - start:.0f} s)", flush=True)
    if args.save:
        model.save(args.save)


if __name__ == "__main__":
    main()
