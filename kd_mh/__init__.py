"""kd_mh: face/voice emotion divergence by knowledge distillation, in JAX/Flax."""
__version__ = "0.1.0"
