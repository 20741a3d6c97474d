"""M3-lite: a small multimodal decoder with MSA layers, readable in one sitting.

    model = M3Lite(M3Config.tiny())
    logits, aux = model(tokens, media)                 # tokens [B, L]; media: modality -> [slots, dim]
    answer = model.generate(tokens[:1], media, max_new_tokens=8)

Each layer: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU MLP -> residual. The first
`dense_layers` layers attend densely; the others are MSA layers, each with its own indexer.
"""
import dataclasses
import json

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import (Indexer, block_attention_mass, block_scores, dense_attention, indexer_distillation_loss,
                         msa_attention, select_blocks, sparse_attention)
from ..attention.common import chosen_blocks
from ..attention.rope import apply_rope, rope_angles
from ..cache import MSACache
from ..tasks.media import SLOTS
from ..tasks.vocab import END, EOS, MODALITIES, SLOT
from .config import M3Config

ATTENTION_MODES = ("msa", "dense", "random")


class Attention(nn.Module):
    """GQA self-attention with QK-norm and partial RoPE; with an indexer when `sparse`."""

    def __init__(self, config, sparse):
        super().__init__()
        c = config
        self.config, self.sparse = c, sparse
        self.wq = nn.Linear(c.dim, c.heads * c.head_dim, bias=False)
        self.wkv = nn.Linear(c.dim, 2 * c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.heads * c.head_dim, c.dim, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(c.head_dim), nn.RMSNorm(c.head_dim)
        for norm in (self.q_norm, self.k_norm):                  # their product scales every logit
            nn.init.constant_(norm.weight, c.qk_gain ** 0.5)
        self.indexer = Indexer(c.dim, c.kv_heads, c.index_dim, rope_dim=c.index_rope_dim,
                               rope_base=c.rope_base) if sparse else None

    def project(self, x, positions):
        """q [B, HQ, T, D], k and v [B, HKV, T, D] for hidden states x [B, T, dim] at `positions`."""
        c = self.config
        B, T, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, T, c.heads, c.head_dim)).transpose(1, 2)
        k, v = self.wkv(x).view(B, T, 2, c.kv_heads, c.head_dim).unbind(2)
        k, v = self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        if c.rope_dim:
            cos, sin = rope_angles(positions, c.rope_dim, c.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x, attention="msa", distill=None, generator=None, trace=None, concentrate=0.0):
        """x [B, T, dim] -> ([B, T, dim], the indexer's distillation loss or None).

        attention: "msa" (the indexer picks the blocks), "dense", or "random" (own block plus
        random earlier blocks: what MSA would be without an indexer). distill: None, "warmup"
        (KL over all visible blocks) or "selected" (KL over the selected blocks). trace: a list
        that MSA layers append their q, k, index queries and keys (iq, ik) and
        selection to (for the indexer's recall and the explorer). concentrate: with distill, the
        weight of a second loss added to it, the main attention's mass outside the selected blocks
        (1 - the indexer's recall), which reaches the main attention rather than the indexer; the
        layer keeps its value in `outside_mass`.
        """
        c = self.config
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device)
        q, k, v = self.project(x, positions)
        if not self.sparse or (attention == "dense" and not distill and trace is None):   # no indexer needed
            return self.wo(dense_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)), None
        iq, ik = self.indexer(x.detach(), positions)    # the indexer learns from its own loss only
        scores = block_scores(iq, ik, block_size=c.block_size, backend="torch")
        choice = scores.detach()
        if attention == "random":                       # own block, then random visible blocks
            choice = torch.rand(scores.shape, device=x.device, generator=generator).masked_fill(
                choice == float("-inf"), float("-inf"))
        sel = select_blocks(choice, top_k=c.top_k, backend="torch")
        if attention == "dense":
            out = dense_attention(q, k, v)
        else:
            # torch's KV-outer path loops over blocks in Python: launch-bound on a GPU, and its
            # backward is slow on a CPU too (tiny() trains 2.7x faster without it). So training, and
            # any GPU, use the query-order gather (a few large ops); inference on a CPU keeps the
            # KV-outer order the course teaches. The two agree to float32 rounding.
            order = "query" if x.is_cuda or self.training else "kv"
            out = sparse_attention(q, k, v, sel, block_size=c.block_size, order=order, backend="torch")
        loss = None
        if distill:
            mass = block_attention_mass(q, k, c.block_size, c.kv_heads, grad=concentrate > 0)
            loss = indexer_distillation_loss(scores, mass.detach(), sel if distill == "selected" else None)
            if concentrate > 0:
                outside = 1 - (mass * chosen_blocks(sel, mass.shape[-1])).sum(-1).mean()
                self.outside_mass = outside.detach()
                loss = loss + concentrate * outside
        if trace is not None:
            trace.append(dict(q=q.detach(), k=k.detach(), iq=iq.detach(), ik=ik.detach(), sel=sel))
        return self.wo(out.transpose(1, 2).reshape(B, T, -1)), loss


    def forward_cached(self, x, positions, cache, attention="msa"):
        """Attention for new tokens x [1, T, dim] at `positions`, appending their keys to `cache`
        (an MSACache of this layer): a whole prompt at once, or decode steps of a few tokens."""
        c = self.config
        q, k, v = self.project(x, positions)
        iq, ik = self.indexer(x, positions) if self.sparse else (None, x.new_zeros(1, 1, x.shape[1], 1))
        cache.append(k, v, ik)
        length = cache.lengths[0]
        if not self.sparse or attention == "dense":
            out = dense_attention(q, cache.k[:, :, :length], cache.v[:, :, :length])
        elif length == x.shape[1]:                                  # the whole prompt: prefill
            out = msa_attention(q, k, v, iq, ik, block_size=c.block_size, top_k=c.top_k)
        else:                                                       # decode steps
            out = cache.attend(q, iq, top_k=c.top_k)
        return self.wo(out.transpose(1, 2).reshape(1, x.shape[1], -1))


class MediaEncoder(nn.Module):
    """One modality's slot features [items * slots, features] -> slot vectors [items * slots, dim]
    and item summaries [items, dim].

    Each slot's vector mixes its own patch or frame with a summary of its whole item (all the
    item's slots at once), so every slot token already carries what the item shows, such as the
    digit's class. The summary alone goes to the item's END token, so the token after an item can
    read the whole item one position back.
    """

    def __init__(self, feature_dim, slots, dim):
        super().__init__()
        self.slots = slots
        self.local = nn.Linear(feature_dim, dim)
        self.summary = nn.Linear(slots * feature_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, features):
        items = features.view(-1, self.slots, features.shape[-1])
        summary = self.summary(items.flatten(1))
        slot_vectors = self.out(F.gelu(self.local(items) + summary[:, None]))
        return slot_vectors.flatten(0, 1), self.out(F.gelu(summary))


class Block(nn.Module):
    def __init__(self, config, sparse):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(config.dim), nn.RMSNorm(config.dim)
        self.attn = Attention(config, sparse)
        self.w_gate_up = nn.Linear(config.dim, 2 * config.mlp_hidden, bias=False)
        self.w_down = nn.Linear(config.mlp_hidden, config.dim, bias=False)

    def mlp(self, x):
        gate, up = self.w_gate_up(x).chunk(2, -1)
        return self.w_down(F.silu(gate) * up)                       # SwiGLU

    def forward(self, x, **kwargs):
        attn, loss = self.attn(self.attn_norm(x), **kwargs)
        x = x + attn
        return x + self.mlp(self.mlp_norm(x)), loss

    def forward_cached(self, x, positions, cache, attention):
        x = x + self.attn.forward_cached(self.attn_norm(x), positions, cache, attention)
        return x + self.mlp(self.mlp_norm(x))


class M3Lite(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        self.config = c = config or M3Config()
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.encoders = nn.ModuleDict({m: MediaEncoder(c.feature_dims[m], SLOTS[m], c.dim) for m in MODALITIES})
        self.blocks = nn.ModuleList([Block(c, sparse=i >= c.dense_layers) for i in range(c.layers)])
        self.norm = nn.RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)

    def embed_stream(self, tokens, media):
        """Token embeddings [B, L, dim]; at each media slot its modality encoder's slot vector, and at
        each media END token the encoder's summary of that item, are added to the token's embedding."""
        check_stream(tokens, media, self.config)
        x = self.embed(tokens)
        for m in MODALITIES:
            slots, ends = tokens == SLOT[m], tokens == END[m]
            if slots.any():
                slot_vectors, summaries = self.encoders[m](media[m].to(x.dtype))
                x = x.masked_scatter(slots[..., None], slot_vectors + x[slots])
                x = x.masked_scatter(ends[..., None], summaries + x[ends])
        return x

    def forward(self, tokens, media=None, attention="msa", distill=None, generator=None, trace=None, concentrate=0.0):
        """Logits [B, L, vocab] and the mean indexer distillation loss of the MSA layers (or None;
        with `concentrate`, see Attention.forward, it includes the concentration loss)."""
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if distill not in (None, "warmup", "selected"):
            raise ValueError(f"distill must be None, 'warmup' or 'selected', got {distill!r}")
        if concentrate < 0 or (concentrate > 0 and distill is None):
            raise ValueError(f"concentrate must be >= 0 and needs distill ('warmup' or 'selected'), got {concentrate!r} "
                             f"with distill={distill!r}")
        x = self.embed_stream(tokens, media or {})
        losses = []
        for block in self.blocks:
            x, loss = block(x, attention=attention, distill=distill, generator=generator, trace=trace,
                            concentrate=concentrate)
            if loss is not None:
                losses.append(loss)
        logits = self.head(self.norm(x))
        return logits, (torch.stack(losses).mean() if losses else None)

    @torch.no_grad()
    def generate(self, tokens, media=None, max_new_tokens=16, attention="msa", stop_token=EOS):
        """Greedy continuation of one prompt (tokens [1, L]) with a KV cache per layer: the new
        token ids, up to and including `stop_token`."""
        if attention not in ("msa", "dense"):
            raise ValueError(f"generate takes attention 'msa' or 'dense', got {attention!r}")
        if tokens.dim() != 2 or tokens.shape[0] != 1:
            raise ValueError(f"generate takes one prompt, tokens [1, L], got shape {tuple(tokens.shape)}")
        c = self.config
        L = tokens.shape[1]
        if L + max_new_tokens > c.max_len:
            raise ValueError(f"the prompt ({L} tokens) plus max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_len={c.max_len}")
        dtype, device = self.embed.weight.dtype, tokens.device
        caches = [MSACache(1, c.kv_heads, c.head_dim, index_dim=c.index_dim if block.attn.sparse else 1,
                           block_size=c.block_size, capacity=L + max_new_tokens, dtype=dtype, device=device)
                  for block in self.blocks]
        x, positions, new = self.embed_stream(tokens, media or {}), torch.arange(L, device=device), []
        for _ in range(max_new_tokens):
            for block, cache in zip(self.blocks, caches):
                x = block.forward_cached(x, positions, cache, attention)
            token = self.head(self.norm(x[:, -1])).argmax(-1)
            new.append(int(token))
            if new[-1] == stop_token:
                break
            x, positions = self.embed(token[:, None]), positions[-1:] + 1
        return new

    def with_dense_layers(self, dense_layers):
        """A copy whose first `dense_layers` layers attend densely: the same weights, the indexers of
        the layers that turn dense dropped. The copy is in training mode: it is made to be fine-tuned,
        as m3lite-small-sharp-dense2 was."""
        c = self.config
        if isinstance(dense_layers, bool) or not isinstance(dense_layers, int) \
                or not c.dense_layers <= dense_layers <= c.layers:
            raise ValueError(f"dense_layers must be an int in [{c.dense_layers}, {c.layers}] (this model has "
                             f"{c.dense_layers} dense layers of {c.layers}), got {dense_layers!r}")
        model = type(self)(dataclasses.replace(c, dense_layers=dense_layers))
        kept = {name: w for name, w in self.state_dict().items() if name in model.state_dict()}
        model.load_state_dict(kept)                                     # strict: every kept weight has a place
        return model.to(next(self.parameters()).device)

    def save(self, path):
        """Weights and config in one safetensors file."""
        from safetensors.torch import save_file
        state = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(state, str(path), metadata={"m3lite": "M3Lite", "config": json.dumps(self.config.to_dict())})

    @classmethod
    def from_pretrained(cls, path, device=None):
        """Load a model written by `save`, in eval mode (`.train()` to fine-tune it); refuses files
        that are not one, or that do not match."""
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {name: f.get_tensor(name) for name in f.keys()}
        except FileNotFoundError:
            raise
        except Exception as error:                                  # safetensors' own error types vary
            raise ValueError(f"{path} is not a readable safetensors checkpoint: {error}") from error
        if metadata.get("m3lite") != "M3Lite" or "config" not in metadata:
            raise ValueError(f"{path} is not an M3Lite checkpoint (no m3lite config in its metadata)")
        model = cls(M3Config.from_dict(json.loads(metadata["config"])))
        expected = model.state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise ValueError(f"{path} does not match its config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the config says "
                                 f"{tuple(expected[name].shape)}")
        model.load_state_dict(state)
        model.eval()
        return model.to(device) if device is not None else model


def check_stream(tokens, media, config):
    """Token ids in the vocabulary, media features for exactly the slots, a length within max_len."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise TypeError(f"tokens must be an int64 tensor [B, L], got {getattr(tokens, 'dtype', type(tokens))} "
                        f"of shape {tuple(getattr(tokens, 'shape', ()))}")
    if tokens.shape[1] > config.max_len:
        raise ValueError(f"the prompt has {tokens.shape[1]} tokens, more than max_len={config.max_len}; "
                         "shorten it (nothing is truncated silently)")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(f"token ids must lie in [0, {config.vocab_size}), got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]")
    unknown = set(media) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modality {sorted(unknown)}; the model knows {MODALITIES}")
    for m in MODALITIES:
        slots = int((tokens == SLOT[m]).sum())
        rows = 0 if m not in media else media[m].shape[0]
        if slots != rows:
            raise ValueError(f"the tokens hold {slots} {m} slots but media[{m!r}] has {rows} feature rows")
        ends = int((tokens == END[m]).sum())
        if slots != ends * SLOTS[m]:
            raise ValueError(f"the tokens hold {slots} {m} slots and {ends} {m} END tokens: media items must be "
                             f"whole, {SLOTS[m]} slots then an END token each")
        if rows and media[m].shape[-1] != config.feature_dims[m]:
            raise ValueError(f"media[{m!r}] features must have dim {config.feature_dims[m]}, "
                             f"got {media[m].shape[-1]}")
