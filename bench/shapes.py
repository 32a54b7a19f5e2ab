"""Base-model shapes the benchmarks run at (LlamaConfig keyword arguments; vocabulary set by each
benchmark)."""

from cola.config import TinyBaseConfig

_TINY = TinyBaseConfig()

SIZES = {
    # The tiny profile's base (calibration.md §2); the CoLA modules around it are params.yaml's `latent.cola`.
    "tiny-1.25M": dict(hidden_size=_TINY.hidden_size, intermediate_size=_TINY.intermediate_size,
                       num_hidden_layers=_TINY.num_layers, num_attention_heads=_TINY.num_heads,
                       num_key_value_heads=_TINY.num_kv_heads),
    # A ~25M-parameter base, for ratios less dominated by per-call Python and kernel-launch overhead.
    "base-25M": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                     num_key_value_heads=4),
}
