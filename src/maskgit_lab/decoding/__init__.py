"""The pure decoder: mask schedules, training masks, MaskGIT's parallel decoding, the
autoregressive baseline's sampling, generation helpers and decode timing.

Nothing here knows about Lightning, MLflow or Optuna: functions take tensors, a
``tokens -> logits`` callable or a model, and an explicit ``torch.Generator``.
"""
