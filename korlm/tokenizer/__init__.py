"""Stage 2, vocab: a tokenizer trained on the clean corpus, and the one tokenizer every
later stage applies.

``files`` (the tokenizer directory format, special tokens, vocab hash), ``vocab``
(training and held-out statistics: ``korlm vocab``), ``spm_model`` (SentencePiece model
files), ``tokenization`` (``KorlmTokenizer`` and the tf-text graph twin), ``morpheme``
(Kiwi segmentation for morpheme vocabs).
"""
