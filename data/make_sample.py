"""Rebuild data/sample/ from the Korean data kit (../shared/data). Deterministic.

Run from the repository root: python data/make_sample.py [KIT_DIR]
"""

import gzip
import os
import shutil
import sys

KIT = sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "shared", "data")
OUT = os.path.join("data", "sample")


def head_lines(src: str, dst: str, n: int, compress: bool = False) -> None:
    opener = gzip.open if src.endswith(".gz") else open
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with opener(src, "rt", encoding="utf-8") as fin:
        lines = [line for _, line in zip(range(n), fin, strict=False)]
    if compress:
        with gzip.GzipFile(dst, "wb", mtime=0) as raw:
            raw.write("".join(lines).encode("utf-8"))
    else:
        with open(dst, "w", encoding="utf-8") as fout:
            fout.writelines(lines)


def main() -> None:
    # Pretraining text: three registers (reviews, petitions, statutes).
    head_lines(f"{KIT}/nsmc/nsmc_extra_reviews_not_in_nsmc.tsv.gz",
               f"{OUT}/raw/movie_reviews.tsv", 12001)
    head_lines(f"{KIT}/korean-petitions/petitions_2019-04.jsonl.gz",
               f"{OUT}/raw/petitions.jsonl.gz", 300, compress=True)
    os.makedirs(f"{OUT}/raw/law", exist_ok=True)
    for name in sorted(os.listdir(f"{KIT}/korean-law-bills")):
        if name.endswith(".txt") and not name.startswith("KONLPY"):
            shutil.copy(f"{KIT}/korean-law-bills/{name}", f"{OUT}/raw/law/{name}")
    # Evaluation: NSMC subsets (header + rows), official split files.
    head_lines(f"{KIT}/nsmc/ratings_train.txt.gz", f"{OUT}/eval/nsmc/ratings_train.txt", 4001)
    head_lines(f"{KIT}/nsmc/ratings_test.txt.gz", f"{OUT}/eval/nsmc/ratings_test.txt", 1001)


if __name__ == "__main__":
    main()
