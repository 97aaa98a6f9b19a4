# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Everything only training needs, apart from the model itself (configuration_emosllm.py, modeling_emosllm.py,
processing_emosllm.py at the top level, which a saved model folder holds): train.py's arguments, the data (sources,
corpora, splits, clip checks, augmentation, transcripts), the encoder cache, the Trainer subclass and its stages,
the probe's fit, evaluation and metrics, resuming, the model card and Hub upload, and the smoke corpus. A saved model
folder never imports it.
"""

__all__ = ["arguments", "augmentation", "clips", "corpora", "data", "encoder_cache", "engines", "evaluation", "hub",
           "metrics", "probe", "recipe", "resume", "smoke_corpus", "splits", "trainer", "transcripts"]
