"""M3-lite: shapes, media slots, generation with the cache, save/load, bad input, distillation."""
import dataclasses

import pytest
import torch

import m3lite as m3
from m3lite.model import M3Config, M3Lite
from m3lite.tasks.vocab import END, SLOT, START, VOCAB_SIZE


def tiny(**changes):
    torch.manual_seed(0)
    return M3Lite(dataclasses.replace(M3Config.tiny(), **changes)).eval()


def stream(L=70, batch=1, image_slots=(5, 9), seed=0):
    """Random byte tokens with one image (START, slots, END), and its features."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (batch, L), generator=g)
    tokens[:, image_slots[0] - 1], tokens[:, image_slots[1]] = START["image"], END["image"]
    tokens[:, image_slots[0]:image_slots[1]] = SLOT["image"]
    dim = M3Config.tiny().feature_dims["image"]
    return tokens, {"image": torch.randn(batch * (image_slots[1] - image_slots[0]), dim, generator=g)}


def test_forward_shapes_and_media_reach_the_logits():
    model = tiny()
    tokens, media = stream(batch=2)
    logits, loss = model(tokens, media)
    assert logits.shape == (2, 70, VOCAB_SIZE) and loss is None
    other = {"image": media["image"] + 1.0}
    changed = (model(tokens, other)[0] - logits).abs().amax(-1)[0]
    assert changed[:5].max() == 0 and changed[5:].min() > 0            # causal: only from the slots on


def test_msa_with_every_block_is_dense():
    model = tiny(top_k=64)
    tokens, media = stream(L=100)
    torch.testing.assert_close(model(tokens, media)[0], model(tokens, media, attention="dense")[0])


def greedy_without_cache(model, tokens, media, steps, attention="msa"):
    """The next `steps` greedy tokens, each from a full forward over everything so far."""
    new = []
    for _ in range(steps):
        nxt = model(tokens, media, attention=attention)[0][0, -1].argmax()
        new.append(int(nxt))
        tokens = torch.cat([tokens, nxt.view(1, 1)], 1)
    return new


@pytest.mark.parametrize("attention,index_rope_dim", [("msa", 0), ("dense", 0), ("msa", 8)])
def test_generate_with_the_cache_equals_greedy_forward(attention, index_rope_dim):
    model = tiny(index_rope_dim=index_rope_dim)          # a positional indexer gets positions in both paths
    head = torch.nn.Linear(model.config.dim, VOCAB_SIZE)                # a random model must not emit media
    head.weight.data.copy_(model.head.weight)                          # slots: they would need features
    head.bias.data.zero_()[[*SLOT.values(), *START.values(), *END.values()]] = -1e4
    model.head = head
    tokens, media = stream(L=90)
    new = model.generate(tokens, media, max_new_tokens=6, attention=attention, stop_token=-1)
    assert new == greedy_without_cache(model, tokens, media, 6, attention)


@pytest.mark.parametrize("name", ["m3lite-small", "m3lite-small-sharp", "m3lite-small-sharp-dense2",
                                  "m3lite-small-concentrated"])
def test_shipped_checkpoints_decode_with_the_cache_as_the_forward_does(name):
    from pathlib import Path

    from m3lite import evals, tasks
    model = M3Lite.from_pretrained(Path(m3.__file__).parents[1] / "data" / "checkpoints" / f"{name}.safetensors").eval()
    example = tasks.haystack(512, seed=3, split="test", key_modality="mixed")
    start = int(example.loss_mask.nonzero()[0])                          # the answer's first token
    prompt, answer = example.tokens[None, :start], example.tokens[start:].tolist()
    new = model.generate(prompt, example.media, max_new_tokens=len(answer), stop_token=-1)
    assert new == greedy_without_cache(model, prompt, example.media, len(answer))
    assert (new == answer) == bool(evals.correct(model, [example])[0])


def test_training_and_inference_take_different_orders_with_the_same_result(monkeypatch):
    import m3lite.model.model as model_module
    orders, sparse_attention = [], model_module.sparse_attention
    monkeypatch.setattr(model_module, "sparse_attention",
                        lambda *args, order, **kwargs: orders.append(order) or sparse_attention(*args, order=order, **kwargs))
    model = tiny()
    tokens, media = stream(L=100)
    with torch.no_grad():
        trained, inferred = model.train()(tokens, media)[0], model.eval()(tokens, media)[0]
    assert orders == ["query"] * 2 + ["kv"] * 2                           # 2 MSA layers, each way
    torch.testing.assert_close(trained, inferred)


def test_with_dense_layers_keeps_the_weights_and_drops_the_indexers():
    model = tiny()                                                       # 1 dense layer of 3
    tokens, media = stream(L=100)
    all_dense = model.with_dense_layers(3)
    assert all_dense.config.dense_layers == 3 and not any(".indexer." in n for n in all_dense.state_dict())
    torch.testing.assert_close(all_dense(tokens, media)[0], model(tokens, media, attention="dense")[0])
    two = model.with_dense_layers(2)
    assert sum(".indexer." in n for n in two.state_dict()) == sum(".indexer." in n for n in model.state_dict()) // 2
    for bad in (0, 4, True, 2.0):
        with pytest.raises(ValueError, match="dense_layers"):
            model.with_dense_layers(bad)


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = M3Lite.from_pretrained(path)
    assert not loaded.training                                           # loaded for inference
    assert loaded.config == model.config
    tokens, media = stream()
    assert torch.equal(loaded(tokens, media)[0], model(tokens, media)[0])


def test_bad_checkpoints_are_refused(tmp_path):
    from safetensors.torch import save_file
    with pytest.raises(FileNotFoundError):
        M3Lite.from_pretrained(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        M3Lite.from_pretrained(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not an M3Lite checkpoint"):
        M3Lite.from_pretrained(foreign)
    small, big = tiny(), tiny(mlp_hidden=256)
    mismatched = tmp_path / "mismatched.safetensors"
    big.save(mismatched)
    state = {n: t.contiguous() for n, t in small.state_dict().items()}
    from safetensors import safe_open
    with safe_open(str(mismatched), "pt") as f:
        metadata = f.metadata()
    save_file(state, str(mismatched), metadata=metadata)                 # weights of one config, another's config
    with pytest.raises(ValueError, match="the config says"):
        M3Lite.from_pretrained(mismatched)


@pytest.mark.parametrize("change, match", [
    (lambda t, m: (t, {**m, "smell": torch.zeros(1, 3)}), "unknown modality"),
    (lambda t, m: (t, {"image": m["image"][:2]}), "4 image slots but media"),
    (lambda t, m: (t, {"image": m["image"][:, :3]}), "features must have dim"),
    (lambda t, m: (t.clamp(max=VOCAB_SIZE) + (t == t.max()) * VOCAB_SIZE, m), "token ids must lie in"),
    (lambda t, m: (t.float(), m), "tokens must be an int64 tensor"),
    (lambda t, m: (t.where(t != END["image"], 65), m), "media items must be whole"),
])
def test_bad_streams_are_refused(change, match):
    model = tiny()
    tokens, media = change(*stream())
    with pytest.raises((ValueError, TypeError), match=match):
        model(tokens, media)


def test_every_slot_and_the_end_token_see_the_whole_item():
    model = tiny()
    tokens, media = stream()
    changed = {"image": media["image"].clone()}
    changed["image"][3] += 1.0                                          # the item's last patch only
    with torch.no_grad():
        change = (model.embed_stream(tokens, changed) - model.embed_stream(tokens, media)).abs().amax(-1)[0]
    assert (change[5:10] > 0).all()                                    # all 4 slots and the END token
    assert change[:5].max() == 0 and change[10:].max() == 0            # nothing else (embeddings only)


def test_too_long_prompts_are_refused():
    model = tiny(max_len=64)
    tokens, media = stream(L=70)
    with pytest.raises(ValueError, match="more than max_len=64"):
        model(tokens, media)
    with pytest.raises(ValueError, match="exceeds max_len=64"):
        model.generate(tokens[:, :60], media, max_new_tokens=8)
    with pytest.raises(ValueError, match="attention must be one of"):
        model(tokens[:, :60], media, attention="sparse")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        M3Config(heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="dense_layers must lie in"):
        M3Config(layers=2, dense_layers=3)
    with pytest.raises(TypeError, match="dim must be an int"):
        M3Config(dim=64.0)
    with pytest.raises(ValueError, match="index_rope_dim must be even"):
        M3Config(index_dim=16, index_rope_dim=18)
    with pytest.raises(ValueError, match="qk_gain must be positive"):
        M3Config(qk_gain=0.0)


def test_qk_gain_scales_the_initial_logits():
    q_norm = tiny(qk_gain=4.0).blocks[0].attn.q_norm
    torch.testing.assert_close(q_norm.weight, torch.full_like(q_norm.weight, 2.0))   # 2 x 2 = 4 on every logit
    with pytest.raises(ValueError, match="unknown M3Config fields"):
        M3Config.from_dict({"dim": 64, "wings": 2})


def test_distillation_teaches_the_indexer_where_attention_looks():
    """A few steps of the indexer's KL loss alone: the loss falls, and the selected blocks hold more
    of the main attention's mass (an untrained model attends almost evenly, so only a little more)."""
    model = tiny()
    tokens, media = stream(L=128, batch=2, seed=3)

    def recall():
        trace = []
        with torch.no_grad():
            model(tokens, media, trace=trace)
        return torch.stack([m3.attention_recall(t["q"], t["k"], t["sel"], block_size=16).mean() for t in trace]).mean()

    indexer_params = [p for n, p in model.named_parameters() if ".indexer." in n]
    opt = torch.optim.Adam(indexer_params, lr=1e-2)
    before, losses = recall(), []
    for _ in range(40):
        _, loss = model(tokens, media, attention="dense", distill="warmup")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    assert recall() > before + 0.01


def test_distillation_over_selected_blocks_ignores_padding():
    """-1 padding in a selection must not hide block 0 from the KL (a row with fewer blocks than top_k)."""
    from m3lite.attention import indexer_distillation_loss
    scores, target = torch.tensor([[[[0.3, -1.0]]]]), torch.tensor([[[[0.2, 0.8]]]])
    full = indexer_distillation_loss(scores, target, torch.tensor([[[[1, 0]]]]))
    padded = indexer_distillation_loss(scores, target, torch.tensor([[[[1, 0, -1, -1]]]]))
    assert full > 0.5 and torch.equal(full, padded)


def test_concentration_loss_is_one_minus_recall_and_trains_the_main_attention():
    """concentrate > 0 adds the main attention's mass outside the selected blocks (group-averaged:
    1 - the indexer's recall) to the layer's loss; its gradient reaches the main attention's
    projections, which the KL alone never does, and a few steps on it alone raise the recall."""
    model = tiny()
    tokens, media = stream(L=128, batch=2, seed=3)
    trace = []
    with torch.no_grad():
        model(tokens, media, trace=trace)
        _, kl = model(tokens, media, distill="selected")
        _, both = model(tokens, media, distill="selected", concentrate=0.5)
    msa_layers = [b.attn for b in model.blocks if b.attn.sparse]
    recalls = [m3.attention_recall(t["q"], t["k"], t["sel"], block_size=16).mean() for t in trace]
    for layer, recall in zip(msa_layers, recalls):
        torch.testing.assert_close(layer.outside_mass, 1 - recall)
    torch.testing.assert_close(both, kl + 0.5 * torch.stack([layer.outside_mass for layer in msa_layers]).mean())

    for bad in ({"concentrate": 0.5}, {"concentrate": -1.0, "distill": "selected"}):
        with pytest.raises(ValueError, match="concentrate"):
            model(tokens, media, **bad)

    wq = msa_layers[0].wq.weight
    for concentrate, reaches in ((0.0, False), (1.0, True)):
        model.zero_grad()
        model(tokens, media, distill="selected", concentrate=concentrate)[1].backward()
        assert (wq.grad is not None and bool(wq.grad.abs().sum() > 0)) is reaches

    attention_params = [p for n, p in model.named_parameters() if ".wq." in n or ".wkv." in n or "_norm." in n]
    opt = torch.optim.Adam(attention_params, lr=1e-2)
    before = torch.stack(recalls).mean()
    for _ in range(20):
        _, loss = model(tokens, media, distill="selected", concentrate=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trace = []
    with torch.no_grad():
        model(tokens, media, trace=trace)
    after = torch.stack([m3.attention_recall(t["q"], t["k"], t["sel"], block_size=16).mean() for t in trace]).mean()
    assert after > before + 0.1
