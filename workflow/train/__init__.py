"""Training: megatron-core GPT on CPU (gloo) or GPU (Transformer Engine); see backend.py."""
