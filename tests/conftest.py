"""Shared test helpers."""

import csv
import os

SAMPLE_REVIEWS = os.path.join(os.path.dirname(__file__), "..", "data", "sample", "raw",
                              "movie_reviews.tsv")


def write_review_corpus(directory, limit: int):
    """A clean-format corpus (one review a document) from the first `limit` bundled reviews."""
    with open(SAMPLE_REVIEWS, encoding="utf-8", newline="") as f:
        reviews = [row["review"].strip() for row in csv.DictReader(f, delimiter="\t")][:limit]
    directory.mkdir()
    (directory / "part-00000-of-00001.txt").write_text(
        "".join(f"{r}\n\n" for r in reviews if r), encoding="utf-8")
    return directory
