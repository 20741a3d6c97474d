"""Training (determinism, exact resume, DDP) and the evaluations, at tiny sizes on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3lite import evals, tasks, train
from m3lite.model import M3Config, M3Lite

ARGS = ["--steps", "4", "--batch", "2", "--context-len", "96", "--warmup-steps", "2", "--eval-every", "100",
        "--ckpt-every", "2", "--eval-examples", "2", "--device", "cpu"]


def weights(path):
    return M3Lite.from_pretrained(path).state_dict()


def test_resumed_run_equals_straight_run(tmp_path):
    train.main(["--out", str(tmp_path / "straight")] + ARGS)
    train.main(["--out", str(tmp_path / "resumed"), "--stop-at", "2"] + ARGS)            # interrupted after 2
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train.main(["--out", str(tmp_path / "resumed"), "--resume"] + ARGS)
    a, b = weights(tmp_path / "straight" / "model.safetensors"), weights(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["phase"] for r in log] == ["dense warm-up"] * 2 + ["msa"] * 2
    assert "eval" in log[-1] and set(log[-1]["eval"]) >= {"caption", "video", "transcribe", "haystack_msa", "haystack_dense"}


def test_concentrate_logs_the_attention_mass_outside_the_selection(tmp_path):
    train.main(["--out", str(tmp_path), "--concentrate", "0.5"] + ARGS)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["outside_mass"] < 1 for r in log) and max(r["outside_mass"] for r in log) > 0
    # (a batch of short examples, 4 blocks or fewer, leaves nothing outside)


def test_resume_refuses_a_different_run(tmp_path):
    train.main(["--out", str(tmp_path)] + ARGS)
    with pytest.raises(ValueError, match="--seed is 1 but"):
        train.main(["--out", str(tmp_path), "--resume", "--seed", "1"] + ARGS)


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--context-len", "10"], ["--max-pairs", "11"],
                                 ["--curriculum-steps", "-1"], ["--concentrate", "-0.5"], ["--model", "layers=x"],
                                 ["--model", "colour=1"],
                                 ["--model", "heads=3"]])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path)] + bad)


def test_curriculum_and_model_changes():
    args = train.parse_args(["--out", "x", "--curriculum-steps", "100", "--model", "layers=2", "dense_layers=1"])
    assert [train.max_pairs(args, step) for step in (0, 9, 10, 55, 99, 100)] == [1, 1, 2, 6, 10, None]
    assert train.model_config(args) == M3Config(**{**M3Config.tiny().to_dict(), "layers": 2})
    args = train.parse_args(["--out", "x", "--curriculum-steps", "10", "--max-pairs", "3"])
    assert [train.max_pairs(args, step) for step in (0, 5, 10)] == [1, 2, 3]


def test_evals_command_writes_every_table(tmp_path):
    torch.manual_seed(0)
    M3Lite(M3Config.tiny()).save(tmp_path / "m.safetensors")
    result = evals.main([str(tmp_path / "m.safetensors"), "--lengths", "96", "--trials", "2", "--examples", "2",
                         "--recall-examples", "1", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert set(result["haystack"]) == set(evals.MODES) and set(result["perception"]) == {"caption", "video", "transcribe"}
    assert all(len(rows) == 1 and rows[0]["n_trials"] == 2 for rows in result["haystack"].values())
    assert len(result["recall"]["msa"][0]["per_layer"]) == M3Config.tiny().layers - M3Config.tiny().dense_layers


def test_batches_depend_on_seed_step_and_rank_only():
    args = train.parse_args(["--out", "unused"] + ARGS)
    a, b = train.make_batch(args, 3, 0, "cpu"), train.make_batch(args, 3, 0, "cpu")
    assert torch.equal(a[0], b[0])
    other_rank, other_step = train.make_batch(args, 3, 1, "cpu"), train.make_batch(args, 4, 0, "cpu")
    for other in (other_rank, other_step):
        assert other[0].shape != a[0].shape or not torch.equal(other[0], a[0])


def test_evals_run_in_every_mode_and_recall_is_per_layer():
    torch.manual_seed(0)
    model = M3Lite(M3Config.tiny()).eval()
    for mode in evals.MODES:
        assert 0.0 <= evals.haystack(model, 160, n_trials=2, seed=0, attention=mode) <= 1.0
    assert 0.0 <= evals.accuracy(model, "caption", n=4) <= 1.0
    recall = evals.indexer_recall(model, [tasks.haystack(300, seed=s) for s in range(2)])
    assert len(recall) == model.config.layers - model.config.dense_layers
    assert all(0.0 < r <= 1.0 for r in recall)
    with pytest.raises(ValueError, match="attention must be one of"):
        evals.haystack(model, 160, n_trials=1, seed=0, attention="sparse")


def test_oracle_recall_bounds_every_selection():
    torch.manual_seed(0)
    model = M3Lite(M3Config.tiny()).eval()
    examples = [tasks.haystack(300, seed=s) for s in range(2)]
    for at in ("all", "answer"):
        oracle = evals.indexer_recall(model, examples, attention="oracle", at=at)
        for mode in ("msa", "untrained"):
            assert all(o >= r - 1e-6 for o, r in zip(oracle, evals.indexer_recall(model, examples, mode, at=at)))
    c = model.config
    sel = evals.oracle_selection(torch.randn(1, c.heads, 40, c.head_dim), torch.randn(1, c.kv_heads, 40, c.head_dim), c)
    assert (sel[..., 0] == torch.arange(40) // c.block_size).all()          # own block first, as select_blocks does
    with pytest.raises(ValueError, match="at must be"):
        evals.indexer_recall(model, examples, at="query")


def test_recalls_together_equal_recalls_one_at_a_time():
    """indexer_recalls shares forward passes between modes and positions; the numbers must not move."""
    torch.manual_seed(0)
    model = M3Lite(M3Config.tiny()).eval()
    examples = [tasks.haystack(300, seed=s) for s in range(2)]
    together = evals.indexer_recalls(model, examples)
    assert set(together) == {(m, at) for m in ("msa", "untrained", "oracle") for at in ("all", "answer")}
    for (mode, at), recall in together.items():
        assert recall == pytest.approx(evals.indexer_recall(model, examples, mode, at=at), abs=1e-6)


def test_untrained_copy_changes_only_the_indexers():
    torch.manual_seed(0)
    model = M3Lite(M3Config.tiny())
    fresh = evals.with_untrained_indexers(model, seed=1)
    before, after = model.state_dict(), fresh.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".indexer." in n for n in changed)


def test_distributed_training_on_two_cpu_processes(tmp_path):
    """torchrun with two gloo processes: it trains, and rank 0 writes the model and the log."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "m3lite.train", "--out", str(tmp_path)] + ARGS
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "model.safetensors").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4
