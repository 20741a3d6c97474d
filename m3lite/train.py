"""Train M3-lite on the mixed task stream: python -m m3lite.train --out runs/tiny [options].

Two phases, as MSA is trained: for the first --warmup-steps steps the MSA layers attend densely
while their indexers learn, by KL distillation, the main attention's mass per block over every
visible block; after that the layers attend sparsely to the indexer's top-k blocks and the
indexers keep learning over the blocks they selected. Only the answer tokens carry the language
loss; the indexer loss is added with weight --distill-weight (it reaches only the indexers).
--concentrate adds a loss that reaches the main attention instead: its mass outside the blocks
MSA selected (1 - the indexer's recall), so that its heads learn to keep their attention in
fewer blocks.

Deterministic from --seed: batch `step` is built from example seeds that depend on (seed, step,
rank) only, so a run stopped and resumed with --resume gives the same weights as one that ran
straight through. Under `torchrun --nproc_per_node N` the same script trains with
DistributedDataParallel (one process per GPU, or per CPU with the gloo backend).
"""
import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import evals, tasks
from .model import M3Config, M3Lite

PERCEPTION_TASKS = ("caption", "video", "transcribe")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m m3lite.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for checkpoint.pt, model.safetensors and log.jsonl")
    p.add_argument("--config", default="tiny", choices=("tiny", "small"), help="tiny: M3Config.tiny(); small: M3Config()")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16, help="examples per step and process")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--context-len", type=int, default=256, help="tokens of each training haystack (the most, with "
                                                                      "--min-context-len)")
    p.add_argument("--min-context-len", type=int, default=None,
                   help="draw each haystack's length uniformly in [this, --context-len] (default: all --context-len)")
    p.add_argument("--init", default=None, help="start from this saved model (its config replaces --config/--model)")
    p.add_argument("--key-modality", default="mixed", choices=tasks.KEY_MODALITIES, help="the haystacks' keys")
    p.add_argument("--max-pairs", type=int, default=None, help="at most this many pairs per haystack (default: all that fit)")
    p.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="change M3Config fields of the chosen --config, e.g. --model layers=6 rope_base=100")
    p.add_argument("--tasks", nargs="+", default=list(tasks.TASKS), choices=list(tasks.TASKS),
                   help="the tasks of the training mix (drawn uniformly)")
    p.add_argument("--curriculum-steps", type=int, default=0,
                   help="haystacks start with one pair; the most pairs grows to 10 over this many steps (0: off)")
    p.add_argument("--warmup-steps", type=int, default=None, help="dense warm-up steps (default: a quarter)")
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--concentrate", type=float, default=0.0,
                   help="weight of a loss on the main attention: its mass outside the selected blocks (0: none)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-examples", type=int, default=32, help="test examples per task at each evaluation")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop (with a checkpoint) once this step is done, as an interruption would")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "context_len", "eval_every", "ckpt_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.min_context_len is not None and not tasks.min_context_len(2, "audio") <= args.min_context_len <= args.context_len:
        p.error(f"--min-context-len must lie in [{tasks.min_context_len(2, 'audio')}, --context-len], got {args.min_context_len}")
    if args.max_pairs is not None and not 1 <= args.max_pairs <= tasks.MAX_PAIRS:
        p.error(f"--max-pairs must lie in 1..{tasks.MAX_PAIRS}, got {args.max_pairs}")
    try:
        model_config(args)
    except (TypeError, ValueError) as error:
        p.error(f"--model: {error}")
    if args.concentrate < 0:
        p.error(f"--concentrate must be 0 or more, got {args.concentrate}")
    if args.curriculum_steps < 0:
        p.error(f"--curriculum-steps must be 0 or more, got {args.curriculum_steps}")
    if args.context_len < tasks.min_context_len(2, "audio"):
        p.error(f"--context-len must be at least {tasks.min_context_len(2, 'audio')} (a haystack of two pairs)")
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 4
    return args


def model_config(args):
    """The M3Config of --config with the --model FIELD=VALUE changes (values parsed as JSON numbers)."""
    config = (M3Config.tiny() if args.config == "tiny" else M3Config()).to_dict()
    for change in args.model:
        field, _, value = change.partition("=")
        if field not in config or field == "feature_dims" or not value:
            raise ValueError(f"expected FIELD=VALUE with a size field of M3Config, got {change!r}")
        try:
            config[field] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{change!r}: the value must be a number") from None
    return M3Config.from_dict(config)


def example_seed(seed, step, rank, i, batch):
    """The seed of example i of process `rank` at `step`: a function of these alone (exact resume)."""
    return ((seed * 1_000_003 + step) * 4096 + rank) * batch + i


def max_pairs(args, step):
    """The curriculum: haystacks hold at most 1 pair at step 0, growing to --max-pairs (or all 10) at
    --curriculum-steps."""
    most = args.max_pairs or tasks.MAX_PAIRS
    if step >= args.curriculum_steps:
        return args.max_pairs
    return 1 + most * step // args.curriculum_steps


def context_len(args, seed):
    """The haystack length of the example with this seed: --context-len, or drawn from the range."""
    if args.min_context_len is None:
        return args.context_len
    return random.Random(seed).randint(args.min_context_len, args.context_len)


def make_batch(args, step, rank, device):
    seeds = [example_seed(args.seed, step, rank, i, args.batch) for i in range(args.batch)]
    examples = [tasks.mixed(seed, "train", tasks=tuple(args.tasks), context_len=context_len(args, seed),
                            key_modality=args.key_modality, max_pairs=max_pairs(args, step)) for seed in seeds]
    tokens, media, loss_mask = tasks.collate(examples)
    return tokens.to(device), {m: x.to(device) for m, x in media.items()}, loss_mask.to(device)


def mean_outside_mass(model):
    """The MSA layers' attention mass outside their selected blocks, at the last step (1 - recall)."""
    masses = [block.attn.outside_mass for block in model.blocks if block.attn.sparse]
    return torch.stack(masses).mean().item()


def answer_loss(logits, tokens, loss_mask):
    """Cross-entropy of the answer tokens, each predicted from the position before it."""
    mask = loss_mask[:, 1:]
    return F.cross_entropy(logits[:, :-1][mask].float(), tokens[:, 1:][mask])


def learning_rate(args, step):
    """Linear warm-up over 5% of the steps, then cosine decay to a tenth."""
    warm = max(1, args.steps // 20)
    if step < warm:
        return args.lr * (step + 1) / warm
    progress = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, args, step):
    """Accuracy per perception task and on test haystacks of the training length (MSA)."""
    model.eval()
    n = args.eval_examples
    result = {task: evals.accuracy(model, task, n=n, seed=10_000) for task in PERCEPTION_TASKS if task in args.tasks}
    if "haystack" in args.tasks:
        for mode in ("msa", "dense"):
            result[f"haystack_{mode}"] = evals.haystack(model, args.context_len, n_trials=n, seed=10_000,
                                                        attention=mode, key_modality=args.key_modality,
                                                        max_pairs=args.max_pairs)
    model.train()
    return {"step": step, **result}


def save_checkpoint(path, model, optimizer, step, args):
    """Everything a resume needs, written atomically (a crash mid-write leaves the old file)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "args": vars(args), "config": model.config.to_dict()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer, args):
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != model.config.to_dict():
        raise ValueError(f"{path} was written for another model config: {state['config']}")
    for name in ("seed", "batch", "steps", "context_len", "min_context_len", "warmup_steps", "curriculum_steps",
                 "tasks", "key_modality", "max_pairs", "init"):
        if state["args"].get(name) != getattr(args, name):             # .get: older runs lack newer options
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(args, name)} but {path} was trained with "
                             f"{state['args'].get(name)}: resuming would not continue the same run")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


def setup_distributed(args):
    """(rank, world size, device); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if world == 1:
        return 0, 1, torch.device(args.device)
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return rank, world, torch.device("cuda", local) if cuda else torch.device("cpu")


def train(args):
    rank, world, device = setup_distributed(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = (M3Lite.from_pretrained(args.init) if args.init else M3Lite(model_config(args))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start = load_checkpoint(out / "checkpoint.pt", model, optimizer, args) if args.resume else 0
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=rank != 0, desc="train")
    for step in bar:
        warmup = step < args.warmup_steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        tokens, media, loss_mask = make_batch(args, step, rank, device)
        logits, distill = net(tokens, media, attention="dense" if warmup else "msa",
                              distill="warmup" if warmup else "selected", concentrate=args.concentrate)
        lm = answer_loss(logits, tokens, loss_mask)
        distill = torch.zeros((), device=device) if distill is None else distill   # no MSA layers
        loss = lm + args.distill_weight * distill
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if rank == 0:
            record = {"step": step + 1, "loss": lm.item(), "indexer_kl": distill.item(),
                      "phase": "dense warm-up" if warmup else "msa", "time": time.time()}
            if args.concentrate > 0:     # indexer_kl then holds the concentration loss too
                record["outside_mass"] = mean_outside_mass(model)
            bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['indexer_kl']:.4f}", phase=record["phase"])
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                record["eval"] = evaluate(model, args, step + 1)
                bar.write(json.dumps(record["eval"]))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if (step + 1) % args.ckpt_every == 0 or step + 1 in (args.steps, args.stop_at):
                save_checkpoint(out / "checkpoint.pt", model, optimizer, step + 1, args)
        if world > 1:
            torch.distributed.barrier()
        if step + 1 == args.stop_at:
            break
    if rank == 0:
        if start < args.steps and (args.stop_at is None or args.stop_at >= args.steps):
            model.save(out / "model.safetensors")
        log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return model


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
