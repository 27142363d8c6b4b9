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

ELECTRA (Clark et al. 2020) sizes are the discriminator's, after the ELECTRA and
KoELECTRA configurations: ``small`` is ELECTRA-Small / KoELECTRA-Small (12 layers,
hidden 256, embeddings 128), ``base`` ELECTRA-Base / KoELECTRA-Base, ``large``
ELECTRA-Large; ``tiny`` and ``mini`` keep BERT-tiny/-mini's encoder with ELECTRA-Small's
128-wide embeddings where the hidden size is larger. The generator is the
discriminator's depth at a fraction of its width (``GENERATOR_FRACTION``: 1/4, 1/3 for
base, as the paper's Table 7 and google-research/electra ``configure_pretraining.py``;
KoELECTRA-Base's generator is exactly base's 256 wide / 4 heads), with 4x-wide
feed-forward blocks and one head per 64 dimensions (``get_generator_config`` there).
"""

from __future__ import annotations

MODEL_FAMILIES = ("bert", "roberta", "bart", "electra")

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_dim": 128, "num_heads": 2, "intermediate_dim": 512},
    "mini": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4, "intermediate_dim": 1024},
    "small": {"num_layers": 4, "hidden_dim": 512, "num_heads": 8, "intermediate_dim": 2048},
    "base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072},
    "large": {"num_layers": 24, "hidden_dim": 1024, "num_heads": 16, "intermediate_dim": 4096},
}

# The ELECTRA discriminator (``embedding_dim``: the token/position/segment embeddings,
# shared with the generator and projected to ``hidden_dim`` when narrower).
ELECTRA_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_dim": 128, "num_heads": 2, "intermediate_dim": 512,
             "embedding_dim": 128},
    "mini": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4, "intermediate_dim": 1024,
             "embedding_dim": 128},
    "small": {"num_layers": 12, "hidden_dim": 256, "num_heads": 4, "intermediate_dim": 1024,
              "embedding_dim": 128},
    "base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072,
             "embedding_dim": 768},
    "large": {"num_layers": 24, "hidden_dim": 1024, "num_heads": 16, "intermediate_dim": 4096,
              "embedding_dim": 1024},
}
# The generator's hidden size as a fraction of the discriminator's.
GENERATOR_FRACTION = {"tiny": 0.25, "mini": 0.25, "small": 0.25, "base": 1 / 3, "large": 0.25}


def generator_config(size: str) -> dict[str, int]:
    """The ELECTRA generator at ``size``: the discriminator's depth, ``GENERATOR_FRACTION``
    of its width, feed-forward 4x wide, one head per 64 dimensions (at least one)."""
    disc = model_config("electra", size)
    hidden = int(round(disc["hidden_dim"] * GENERATOR_FRACTION[size]))
    return {"num_layers": disc["num_layers"], "hidden_dim": hidden,
            "num_heads": max(1, hidden // 64), "intermediate_dim": 4 * hidden}


def model_config(family: str, size: str) -> dict[str, int]:
    """The backbone dimensions of ``family`` at ``size``; for BART ``num_layers`` is per
    stack (encoder and decoder each); for ELECTRA the discriminator's, with its
    ``embedding_dim``."""
    if family == "electra":
        size_config(size)  # the one error for an unknown size
        return dict(ELECTRA_SIZES[size])
    config = size_config(size)
    if family == "bart":
        config["num_layers"] = max(1, config["num_layers"] // 2)
    return config


def size_config(size: str) -> dict[str, int]:
    try:
        return dict(SIZES[size])
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}") from None
