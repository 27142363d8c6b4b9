"""Model size presets shared by pretrain, evaluate and export.

Sizes follow the names people compare against: BERT tiny/mini/small (Turc et al. 2019,
"Well-Read Students Learn Better"), BERT base/large (Devlin et al. 2019). RoBERTa uses
the same dimensions. BART splits the depth between encoder and decoder, as BART-base
(6 + 6 layers, hidden 768) and BART-large (12 + 12, 1024) do against BERT-base (12) and
BERT-large (24): ``model_config`` gives each stack ``num_layers / 2`` (at least 1).

Parameters with a 32,000-token vocabulary and 512 positions (pretraining task, measured
by building it; ``docs/training.md``): BERT 4.6M / 11.6M / 29.8M / 111M / 338M, RoBERTa
4.6M / 11.6M / 29.6M / 111M / 337M, BART 4.7M / 12.1M / 31.6M / 125M / 387M for tiny /
mini / small / base / large.
"""

from __future__ import annotations

MODEL_FAMILIES = ("bert", "roberta", "bart")

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_dim": 128, "num_heads": 2, "intermediate_dim": 512},
    "mini": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4, "intermediate_dim": 1024},
    "small": {"num_layers": 4, "hidden_dim": 512, "num_heads": 8, "intermediate_dim": 2048},
    "base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072},
    "large": {"num_layers": 24, "hidden_dim": 1024, "num_heads": 16, "intermediate_dim": 4096},
}


def model_config(family: str, size: str) -> dict[str, int]:
    """The backbone dimensions of ``family`` at ``size``; for BART ``num_layers`` is per
    stack (encoder and decoder each)."""
    config = size_config(size)
    if family == "bart":
        config["num_layers"] = max(1, config["num_layers"] // 2)
    return config


def size_config(size: str) -> dict[str, int]:
    try:
        return dict(SIZES[size])
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}") from None
