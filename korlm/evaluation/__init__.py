"""Stages 5-6, evaluate and report: every checkpoint fine-tuned and scored on Korean
benchmarks, and the results table.

``tasks`` (built-in and YAML-declared tasks, their data), ``metrics``, ``tagging`` (token
classification: tags aligned to subwords, spans, KLUE-NER scores), ``evaluate``
(fine-tuning heads, ``fine_tune``, ``evaluate_checkpoint``), ``augment`` (EDA over Kiwi
morphemes), ``finetune`` (a servable fine-tuned model), ``tune`` (Optuna search),
``report`` (results.md/.html and plots), ``ablation`` (vocab variants x model sizes).
"""
