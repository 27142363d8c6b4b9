"""korlm: raw Korean text to a pretrained, benchmarked and published language model."""

__version__ = "0.1.0"
