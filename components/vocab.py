"""KFP component: train the subword vocabulary (korlm vocab)."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def vocab(corpus: Input[Dataset], params: dict, tokenizer: Output[Artifact],
          stats: Output[Metrics], vocab_size: int = 0, algorithm: str = None):
    """Train WordPiece/SentencePiece on the cleaned corpus; write the tokenizer artifact."""
    from korlm.config import section_params

    # the pipeline parameters; 0/None: not given (kfp.local cannot pass a null int)
    params = section_params("vocab", params, {"vocab_size": vocab_size or None, "algorithm": algorithm})
    from korlm.tokenizer.vocab import build_vocab

    # KFP owns the output path: a retried task replaces its own earlier artifact
    result = build_vocab(corpus.path, tokenizer.path, overwrite=True, **params)
    tokenizer.metadata.update({"vocab_size": result["vocab_size"],
                               "algorithm": result["algorithm"],
                               "pre_tokenizer": result["pre_tokenizer"]})
    for key in ("vocab_size", "unk_rate", "tokens_per_eojeol", "coverage"):
        if result.get(key) is not None:
            stats.log_metric(key, result[key])
