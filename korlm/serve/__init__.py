"""Serving a fine-tuned model: ``server`` (FastAPI over a ``korlm finetune`` output)."""
