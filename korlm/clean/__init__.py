"""Stage 1, clean: raw corpora -> one sentence a line, a blank line between documents.

``readers`` (formats, ``compressed`` streams) -> ``cleaner`` (per document, plain Python:
``text`` normalization, ``pii`` scrubbing, ``filters``) -> ``dedup`` -> ``beam`` (the
pipeline, ``run_clean``). ``corpus`` reads the output back for the later stages.
"""
