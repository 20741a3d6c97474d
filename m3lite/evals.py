"""Evaluating M3-lite: accuracy per task, the long-context haystack, and the indexer's recall.

    from m3lite import evals
    evals.accuracy(model, "caption", n=64)                       # share of exact answers
    evals.haystack(model, context_len=1024, n_trials=32, seed=0, attention="msa")
    evals.indexer_recall(model, examples)                        # per MSA layer

An answer counts as right when greedy decoding would produce it exactly, answer and <eos>: every
answer token is the model's argmax given the tokens before it (teacher forcing gives exactly the
greedy result, one batched forward instead of a decode loop).
Attention modes: "dense", "msa" (the trained indexer), "untrained" (MSA with freshly initialised
indexers) and "random" (own block plus random visible blocks).
"""
import copy

import torch

from . import tasks
from .attention import attention_recall, block_attention_mass, select_blocks
from .model import ATTENTION_MODES

MODES = ATTENTION_MODES + ("untrained",)


@torch.no_grad()
def correct(model, examples, attention="msa", seed=0):
    """Bool [len(examples)]: is each example's answer the model's greedy answer?"""
    if attention not in MODES:
        raise ValueError(f"attention must be one of {MODES}, got {attention!r}")
    if attention == "untrained":
        model, attention = with_untrained_indexers(model, seed), "msa"
    device = next(model.parameters()).device
    tokens, media, loss_mask = tasks.collate(examples)
    tokens, loss_mask = tokens.to(device), loss_mask.to(device)
    media = {m: x.to(device) for m, x in media.items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    logits, _ = model(tokens, media, attention=attention, generator=generator)
    right = (logits[:, :-1].argmax(-1) == tokens[:, 1:]) | ~loss_mask[:, 1:]
    return right.all(-1).cpu()


def accuracy(model, task, n=64, seed=0, split="test", attention="msa", batch=16, **task_kwargs):
    """Share of `n` examples of `task` (seeds seed .. seed + n - 1) answered exactly."""
    hits = []
    for start in range(seed, seed + n, batch):
        examples = [tasks.sample(task, s, split, **task_kwargs) for s in range(start, min(start + batch, seed + n))]
        hits.append(correct(model, examples, attention, seed=start))
    return torch.cat(hits).float().mean().item()


def haystack(model, context_len, n_trials, seed, attention="msa", key_modality="mixed", split="test", batch=4,
             max_pairs=None):
    """Accuracy on `n_trials` haystacks of `context_len` tokens: does the model find the word?"""
    return accuracy(model, "haystack", n=n_trials, seed=seed, split=split, attention=attention, batch=batch,
                    context_len=context_len, key_modality=key_modality, max_pairs=max_pairs)


@torch.no_grad()
def indexer_recall(model, examples, attention="msa", at="all"):
    """Per MSA layer, the share of the main attention's mass inside the selected blocks (mean over
    examples, heads and positions); 1.0 = the selection misses nothing.

    attention: "msa" (the trained indexers), "untrained" (freshly initialised indexers), or "oracle"
    (the best any selection of top_k blocks can do: each group's heaviest blocks, own block forced).
    at: "all" positions, or only the "answer" position (the last prompt token, which predicts the
    answer's first token: in a haystack, the query looking for its key).
    """
    return indexer_recalls(model, examples, (attention,), (at,))[attention, at]


def indexer_recalls(model, examples, attentions=("msa", "untrained", "oracle"), ats=("all", "answer")):
    """indexer_recall for several (attention, at) at once: {(attention, at): per-layer recall}.

    One forward pass per example serves the trained indexers' recall, the oracle's and every `at`;
    the untrained indexers need one more.
    """
    for attention in attentions:
        if attention not in ("msa", "untrained", "oracle"):
            raise ValueError(f"attention must be 'msa', 'untrained' or 'oracle', got {attention!r}")
    for at in ats:
        if at not in ("all", "answer"):
            raise ValueError(f"at must be 'all' or 'answer', got {at!r}")
    c = model.config
    device = next(model.parameters()).device
    runs = {}                                   # the model whose trace each attention reads
    if {"msa", "oracle"} & set(attentions):
        runs["trained"] = model
    if "untrained" in attentions:
        runs["untrained"] = with_untrained_indexers(model)
    per_layer = {(attention, at): [] for attention in attentions for at in ats}
    for example in examples:
        media = {m: x.to(device) for m, x in example.media.items()}
        answer = int(example.loss_mask.nonzero()[0]) - 1
        for run, run_model in runs.items():
            trace = []
            run_model(example.tokens[None].to(device), media, attention="msa", trace=trace)
            for attention in attentions:
                if (run == "untrained") != (attention == "untrained"):
                    continue
                recalls = [attention_recall(t["q"], t["k"], oracle_selection(t["q"], t["k"], c)
                                            if attention == "oracle" else t["sel"], block_size=c.block_size)
                           for t in trace]                          # each [B, HQ, T]
                for at in ats:
                    positions = slice(None) if at == "all" else answer
                    per_layer[attention, at].append([r[..., positions].mean().item() for r in recalls])
    return {key: torch.tensor(rows).mean(0).tolist() for key, rows in per_layer.items()}


def oracle_selection(q, k, config):
    """The top_k blocks of each KV group's dense attention mass (own block forced): [B, HKV, T, K]."""
    mass = block_attention_mass(q, k, config.block_size, config.kv_heads)             # [B, HKV, T, NB]
    T, NB = mass.shape[-2:]
    future = torch.arange(NB, device=q.device) * config.block_size > torch.arange(T, device=q.device)[:, None]
    return select_blocks(mass.masked_fill(future, float("-inf")), top_k=config.top_k, backend="torch")


def with_untrained_indexers(model, seed=0):
    """A copy of `model` whose indexers are freshly initialised (as before any distillation).

    Drawn on the CPU, so the same seed gives the same indexers on every device."""
    fresh = copy.deepcopy(model)
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):                       # leave the caller's random state alone
        torch.manual_seed(seed)
        for block in fresh.blocks:
            indexer = block.attn.indexer
            if indexer is not None:
                device = next(indexer.parameters()).device
                indexer.cpu()
                for module in indexer.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                indexer.to(device)
    return fresh


def main(argv=None):
    """python -m m3lite.evals CHECKPOINT [--lengths ...] [--trials N] [--out JSON]: the whole evaluation."""
    import argparse
    import json
    import platform
    import time

    from tqdm import tqdm

    from .model import M3Lite
    p = argparse.ArgumentParser(prog="python -m m3lite.evals", description=main.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048], help="haystack lengths")
    p.add_argument("--trials", type=int, default=64, help="haystacks per length and mode")
    p.add_argument("--examples", type=int, default=128, help="test examples per perception task")
    p.add_argument("--recall-examples", type=int, default=16, help="haystacks per length for the indexer's recall")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--out", default=None, help="write the results here as JSON")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    model = M3Lite.from_pretrained(args.checkpoint).eval().to(args.device)
    machine = (torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    start = time.time()
    result = {"checkpoint": str(args.checkpoint), "config": model.config.to_dict(), "torch": torch.__version__,
              "machine": machine, "split": "test",
              "perception": {}, "haystack": {m: [] for m in args.modes}, "recall": {"msa": [], "untrained": [], "oracle": []},
              "recall_at_answer": {"msa": [], "untrained": [], "oracle": []}}
    for task in ("caption", "video", "transcribe"):
        result["perception"][task] = {"accuracy": accuracy(model, task, n=args.examples, seed=0), "n": args.examples}
        print(task, result["perception"][task])
    for length in tqdm(args.lengths, desc="lengths"):
        for mode in args.modes:
            hit = haystack(model, length, args.trials, seed=0, attention=mode)
            result["haystack"][mode].append({"context_len": length, "accuracy": hit, "n_trials": args.trials})
            tqdm.write(f"haystack {length:5d} {mode:9s} {hit:.3f}")
        examples = [tasks.haystack(length, s, "test", key_modality="mixed") for s in range(args.recall_examples)]
        recalls = indexer_recalls(model, examples)
        for at, table in (("all", "recall"), ("answer", "recall_at_answer")):
            for mode in ("msa", "untrained", "oracle"):
                recall = recalls[mode, at]
                result[table][mode].append({"context_len": length, "per_layer": recall, "n": args.recall_examples})
                tqdm.write(f"{table} {length:5d} {mode:9s} " + " ".join(f"{r:.3f}" for r in recall))
    result["seconds"] = round(time.time() - start, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
