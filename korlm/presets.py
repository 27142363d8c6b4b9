"""Model size presets shared by pretrain, evaluate and export.

Sizes follow the names people compare against: BERT tiny/mini/small (Turc et al. 2019,
"Well-Read Students Learn Better"), BERT base/large (Devlin et al. 2019).
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


def size_config(size: str) -> dict[str, int]:
    try:
        return dict(SIZES[size])
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}") from None
