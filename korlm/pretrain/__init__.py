"""Stage 4, pretrain: a model trained from scratch on the packed shards, with a
checkpoint every K steps.

``train`` (``run_pretrain``: phases, devices, the ``fit`` loop), ``dataset`` (the
``tf.data`` input, checked against the tokenizer and the settings), ``masking`` and
``noising`` (MLM masks, BART noise, in the graph), ``optimizer`` (schedule, losses,
metrics), ``state`` (the run folder, saved training states and resuming), ``monitor``
(logging and checkpointing while training), ``electra`` (ELECTRA's input, optimizer and
FLOPs), ``distribute`` (strategy, precision,
memory and FLOP estimates).
"""
