"""Checkers of notebook 06 (the M3-lite model), and the pictures and tables of m3lite.viz.model."""
import json

import torch
from matplotlib.figure import Figure

from m3lite import tasks
from m3lite.course import nb06
from m3lite.model import M3Config, M3Lite
from m3lite.solutions import nb06 as sol06
from m3lite.tasks import EOS, FEATURE_DIMS, SLOT, SLOTS, START
from m3lite.viz.model import (PARTS, answer_text, parameter_counts, parameter_part, plot_logit_change,
                              plot_parameter_counts, plot_training, read_log, readable, show_answers,
                              show_slot_features)
from conftest import exercise_checker_tests


def tokens_slots_only(modality):
    return SLOTS[modality]


def tokens_one_marker(modality):
    return SLOTS[modality] + 1


def tokens_feature_dim(modality):
    return FEATURE_DIMS[modality] + 2


def tokens_one_slot_per_frame(modality):
    return {"image": 6, "video": 7, "audio": 14}[modality]


def mask_without_eos(prompt_len, answer):
    return sol06.loss_mask(prompt_len, answer)[:-1]


def mask_counting_characters(prompt_len, answer):
    return torch.cat([torch.zeros(prompt_len, dtype=torch.bool), torch.ones(len(answer) + 1, dtype=torch.bool)])


def mask_shifted(prompt_len, answer):
    return sol06.loss_mask(prompt_len, answer).roll(-1)


def mask_upside_down(prompt_len, answer):
    return ~sol06.loss_mask(prompt_len, answer)


def slots_position_major(tokens, modality):
    return (tokens.T == SLOT[modality]).nonzero()[:, [1, 0]]


def slots_from_start_tokens(tokens, modality):
    return (tokens == START[modality]).nonzero()


def slots_positions_only(tokens, modality):
    return (tokens == SLOT[modality]).nonzero()[:, 1]


def slots_swapped_columns(tokens, modality):
    return (tokens == SLOT[modality]).nonzero()[:, [1, 0]]


def mlp_without_gate(dim, hidden):
    return 2 * dim * hidden


def mlp_with_biases(dim, hidden):
    return 3 * dim * hidden + 2 * hidden + dim


def mlp_with_its_norm(dim, hidden):
    return 3 * dim * hidden + dim


CHECKS = [
    (nb06.check_item_tokens, sol06.item_tokens, tokens_slots_only, "START and END"),
    (nb06.check_item_tokens, sol06.item_tokens, tokens_one_marker, "both START and END"),
    (nb06.check_item_tokens, sol06.item_tokens, tokens_feature_dim, "numbers one slot's features hold"),
    (nb06.check_item_tokens, sol06.item_tokens, tokens_one_slot_per_frame, "every patch of every frame"),
    (nb06.check_loss_mask, sol06.loss_mask, mask_without_eos, "<eos>"),
    (nb06.check_loss_mask, sol06.loss_mask, mask_counting_characters, "UTF-8 bytes"),
    (nb06.check_loss_mask, sol06.loss_mask, mask_shifted, "shift by one"),
    (nb06.check_loss_mask, sol06.loss_mask, mask_upside_down, "upside down"),
    (nb06.check_slot_positions, sol06.slot_positions, slots_position_major, "batch-major"),
    (nb06.check_slot_positions, sol06.slot_positions, slots_from_start_tokens, "START tokens"),
    (nb06.check_slot_positions, sol06.slot_positions, slots_positions_only, "the batch matters"),
    (nb06.check_slot_positions, sol06.slot_positions, slots_swapped_columns, "(batch, position), in that order"),
    (nb06.check_swiglu_parameters, sol06.swiglu_parameters, mlp_without_gate, "three matrices"),
    (nb06.check_swiglu_parameters, sol06.swiglu_parameters, mlp_with_biases, "no bias"),
    (nb06.check_swiglu_parameters, sol06.swiglu_parameters, mlp_with_its_norm, "RMSNorm"),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(CHECKS)


def test_item_tokens_by_hand():
    # START + 4 patches + END; START + 5 frames x 4 patches + END; START + 12 frames + END
    assert [sol06.item_tokens(m) for m in ("image", "video", "audio")] == [6, 22, 14]


def test_loss_mask_matches_real_examples():
    for example in (tasks.caption(0), tasks.video(1), tasks.transcribe(2), tasks.haystack(200, 3)):
        prompt_len = int((~example.loss_mask).sum())
        assert torch.equal(sol06.loss_mask(prompt_len, example.answer), example.loss_mask)


def test_fill_order_read_off_embed_stream_is_the_row_major_slot_order():
    for label, tokens, modality in nb06._batches():
        order = nb06._fill_order_of_embed_stream(tokens, modality)
        assert torch.equal(order, (tokens == SLOT[modality]).nonzero()), label
    assert any(len(nb06._fill_order_of_embed_stream(t, m)) == 0 for _, t, m in nb06._batches())   # an empty case


def test_mlp_parameters_of_a_block_by_hand():
    assert nb06._mlp_parameters_of_a_block(64, 192) == 3 * 64 * 192
    assert nb06._mlp_parameters_of_a_block(6144, 9216) == 3 * 6144 * 9216


def test_readable_names_specials_and_marks_slots():
    example = tasks.caption(0)
    assert readable(example.tokens) == f"<bos><image_start>▮▮▮▮<image_end>caption:{example.answer}<eos>"
    assert readable(torch.tensor(tasks.encode_text("héllo"))) == "héllo"         # multi-byte text stays whole
    assert readable([]) == "" and readable([SLOT["audio"]], slot="#") == "#"


def test_answer_text_stops_at_eos():
    assert answer_text(tasks.encode_text("seven") + [EOS]) == "seven"
    assert answer_text(tasks.encode_text("four") + [EOS, 65]) == "four"
    assert answer_text(tasks.encode_text("no end")) == "no end"


def test_parameter_counts_add_up_and_sort_every_parameter():
    torch.manual_seed(0)
    model = M3Lite(M3Config.tiny())
    counts = parameter_counts(model)
    assert list(counts) == list(PARTS) and all(v > 0 for v in counts.values())
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    c = model.config
    assert counts["MLPs"] == c.layers * 3 * c.dim * c.mlp_hidden
    assert counts["indexers"] == (c.layers - c.dense_layers) * (c.dim * (c.kv_heads + 1) * c.index_dim + c.index_dim)
    assert parameter_part("blocks.0.attn.q_norm.weight") == "norms"
    assert parameter_part("blocks.2.attn.indexer.k_norm.weight") == "indexers"
    assert parameter_part("blocks.1.attn.wkv.weight") == "attention"


def test_read_log(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval": {"step": 2, "caption": 0.5}}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_log(path) == records


def test_pictures_are_figures():
    torch.manual_seed(0)
    examples = [tasks.caption(0, "test"), tasks.video(1, "test"), tasks.transcribe(2, "test")]
    hay = tasks.haystack(120, 0, key_modality="image")
    log = [{"step": s, "loss": 5.0 / s, "indexer_kl": 0.01, "phase": "dense warm-up" if s < 3 else "msa"}
           for s in range(1, 9)]
    log[3]["eval"] = {"step": 4, "caption": 0.25}
    log[7]["eval"] = {"step": 8, "caption": 0.5}
    model = M3Lite(M3Config.tiny())
    figs = [show_slot_features(examples), show_slot_features(examples[:1]),
            plot_parameter_counts({"tiny": parameter_counts(model)}),
            plot_logit_change(hay, torch.rand(len(hay.tokens))),
            plot_logit_change(hay, torch.rand(len(hay.tokens)), span=(5, 11)),
            show_answers(examples[:1] * 3, ["wrong", examples[0].answer, "x"]),
            show_answers([examples[1]] * 3, [examples[1].answer] * 3),
            show_answers(examples[2:], [examples[2].answer]),
            plot_training(log, title="a run"), plot_training(log[:2], smooth=20)]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
