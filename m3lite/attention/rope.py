"""Partial rotary position embedding: only the first `rope_dim` dims of a head are rotated."""
import torch


def rope_angles(positions, rope_dim, base=10000.0):
    """cos, sin [T, rope_dim // 2] for integer positions [T]."""
    inv_freq = base ** (-torch.arange(0, rope_dim, 2, device=positions.device, dtype=torch.float32) / rope_dim)
    angles = positions.float()[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate the first 2 * cos.shape[-1] dims of x [..., T, D] pairwise; leave the rest as is."""
    r = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :r].float(), x[..., r:]
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x_pass), dim=-1)
