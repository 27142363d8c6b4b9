"""Stage 3, pretrain-data: the clean corpus tokenized and packed into TFRecord shards.

``packing`` (the packing modes, static masks and example encoding as plain numpy),
``beam`` (the pipeline: ``run_pretrain_data``), ``shards`` (checks every shard reads
back whole before training starts).
"""
