"""graftline: a terminal console for multi-stage LoRA post-training."""

__version__ = "0.1.0"
