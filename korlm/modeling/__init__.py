"""Models shared by the pretrain, evaluation and hub stages: ``presets`` (sizes), ``build``
(KerasHub backbones and pretraining tasks), ``electra`` (ELECTRA's generator +
discriminator, which KerasHub has no task for), ``checkpoints`` (the checkpoint format and
the run layout: ``checkpoints/step-NNNNNN/``, ``checkpoints.json``), ``hf_mapping`` (the
per-family Keras <-> Hugging Face converters) and ``hf_import`` (a Hugging Face export
read back as a KerasHub backbone)."""
