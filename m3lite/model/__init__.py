"""M3-lite: the small multimodal model with MSA layers (config, layers, save and load)."""
from .config import M3Config
from .model import ATTENTION_MODES, M3Lite

__all__ = ["ATTENTION_MODES", "M3Config", "M3Lite"]
