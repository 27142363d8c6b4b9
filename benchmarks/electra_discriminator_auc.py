"""How well an ELECTRA checkpoint's discriminator ranks replaced tokens above original
ones on the data's held-out slice: ROC AUC over every non-padding token, with the
checkpoint's own generator drawing the replacements (fixed seed) and with uniformly random
replacements at the same masked slots. Accuracy at the 0-logit threshold hides early
learning (a discriminator that says "original" everywhere already scores 1 - the replaced
share); AUC 0.5 is no ranking at all.

    .venv/bin/python benchmarks/electra_discriminator_auc.py CHECKPOINT DATA_DIR TOKENIZER_DIR
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("tokenizer")
    parser.add_argument("--examples", type=int, default=640)
    args = parser.parse_args()

    import numpy as np
    from keras import ops
    from sklearn.metrics import roc_auc_score

    from korlm.modeling.checkpoints import load_pretraining_task
    from korlm.pretrain import heldout as ho
    from korlm.pretrain.dataset import inspect_data, label_slots

    task = load_pretraining_task(args.checkpoint)
    meta, _ = inspect_data(args.data, args.tokenizer)
    seq = int(meta["max_seq_length"])
    batches = ho.load_batches(
        ho.heldout_files(args.data, meta), num_examples=meta["heldout"]["num_examples"],
        max_examples=args.examples, objective="mlm", max_seq_length=seq, data_max_seq_length=seq,
        vocab_size=meta["vocab_size"], special_ids=meta["special_token_ids"],
        features=meta["features"], masking="dynamic", mask_rate=0.15,
        max_predictions=label_slots(meta, "dynamic", None), segment_ids=True)
    out = {}
    for mode in ("generator", "uniform"):
        scores, labels = [], []
        for x, y, w in batches:
            inputs = {k: ops.convert_to_tensor(v)
                      for k, v in {**x, "mask_ids": y, "mask_weights": w}.items()}
            logits = task.generator_logits(inputs, ops.cast(inputs["mask_positions"], "int32"))
            if mode == "uniform":  # equal logits: a uniform draw over the vocabulary
                logits = ops.zeros_like(logits)
            corrupted, replaced = task.corrupt(inputs, logits, ho.HELDOUT_SEED)
            disc = ops.convert_to_numpy(task.discriminator_logits({**inputs, "token_ids": corrupted}))
            real = np.asarray(x["padding_mask"]).astype(bool)
            scores.append(disc[real])
            labels.append(ops.convert_to_numpy(replaced)[real])
        s, lab = np.concatenate(scores), np.concatenate(labels)
        out[mode] = {"auc": round(float(roc_auc_score(lab, s)), 4),
                     "replaced_rate": round(float(lab.mean()), 4), "tokens": int(lab.size)}
    print(json.dumps({"checkpoint": args.checkpoint, **out}))


if __name__ == "__main__":
    main()
