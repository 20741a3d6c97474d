"""M3Config: every size of the M3-lite model, in one place, saved with its weights."""
from dataclasses import asdict, dataclass, field, fields

from ..tasks import FEATURE_DIMS
from ..tasks.vocab import VOCAB_SIZE


@dataclass
class M3Config:
    """The M3 design at a small size: the first `dense_layers` layers dense, the rest MSA.

    Attention: GQA with `heads` query heads and `kv_heads` KV heads of `head_dim`, QK-norm, rotary
    embedding on the first `rope_dim` dims of each head; `qk_gain` is the QK-norm weights' initial
    product, so a logit can start at up to `qk_gain * sqrt(head_dim)` (1.0: the usual init, as in
    the shipped checkpoint, whose gains stayed near 1). MSA layers add an indexer (one index head
    per KV group, dim `index_dim`, one shared index-key head) that picks `top_k` blocks of
    `block_size` tokens per query; `index_rope_dim` of its dims get rotary embedding too (0: the
    indexer cannot see positions, as in the shipped checkpoint). MLP: SwiGLU of width `mlp_hidden`.
    """
    dim: int = 128
    layers: int = 4
    dense_layers: int = 1
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    rope_dim: int = 16
    qk_gain: float = 1.0
    index_dim: int = 32
    index_rope_dim: int = 0
    block_size: int = 32
    top_k: int = 4
    mlp_hidden: int = 384
    max_len: int = 8192
    rope_base: float = 10000.0
    vocab_size: int = VOCAB_SIZE
    feature_dims: dict = field(default_factory=lambda: dict(FEATURE_DIMS))

    @classmethod
    def tiny(cls):
        """Small enough to train on a laptop CPU in minutes."""
        return cls(dim=64, layers=3, dense_layers=1, heads=4, kv_heads=2, head_dim=16, rope_dim=8,
                   index_dim=16, block_size=16, top_k=4, mlp_hidden=192)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"M3Config.{f.name} must be an int, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"M3Config.heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if not 0 <= self.dense_layers <= self.layers:
            raise ValueError(f"M3Config.dense_layers must lie in [0, layers={self.layers}], got {self.dense_layers}")
        if self.rope_dim % 2 or not 0 <= self.rope_dim <= self.head_dim:
            raise ValueError(f"M3Config.rope_dim must be even and in [0, head_dim={self.head_dim}], got {self.rope_dim}")
        if not self.qk_gain > 0:
            raise ValueError(f"M3Config.qk_gain must be positive, got {self.qk_gain}")
        if self.index_rope_dim % 2 or not 0 <= self.index_rope_dim <= self.index_dim:
            raise ValueError(f"M3Config.index_rope_dim must be even and in [0, index_dim={self.index_dim}], "
                             f"got {self.index_rope_dim}")
        if set(self.feature_dims) != set(FEATURE_DIMS):
            raise ValueError(f"M3Config.feature_dims must give a dim for each of {sorted(FEATURE_DIMS)}, "
                             f"got {sorted(self.feature_dims)}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown M3Config fields {sorted(unknown)} (a checkpoint from another version?)")
        floats = {f.name for f in fields(cls) if f.type in (float, "float")}
        return cls(**{name: float(v) if name in floats and isinstance(v, int) else v for name, v in values.items()})
