"""Integrity check of a pretraining-data directory: every shard readable, CRCs intact,
record counts as ``metadata.json`` says.

Training calls :func:`verify_shards` (from ``korlm.pretrain.dataset.inspect_data``) before it
starts, so a truncated copy or a flipped bit fails at once with the shard's name instead
of as a ``DataLossError`` deep inside ``model.fit`` hours later.
"""

from __future__ import annotations

import re
from typing import Any

from korlm import storage
from korlm.errors import KorlmError


class CorruptShardError(KorlmError):
    """A TFRecord shard that cannot be read to its end, or holds a different record count."""


def count_records(path: str) -> int:
    """Records in one TFRecord shard, reading every record with its length and data CRCs."""
    import tensorflow as tf

    name = path.rsplit("/", 1)[-1]
    dataset = tf.data.TFRecordDataset([path], buffer_size=1 << 20).batch(4096)
    try:
        return int(dataset.reduce(tf.constant(0, tf.int64),
                                  lambda n, batch: n + tf.shape(batch, out_type=tf.int64)[0]).numpy())
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as exc:
        text = str(getattr(exc, "message", exc))
        found = re.search(r"(corrupted|truncated) record at \d+", text)
        reason = found.group(0) if found else text.split("\n")[0][-200:]
        raise CorruptShardError(f"pretraining data shard {name} ({path}) is corrupt or truncated: {reason}; "
                                "re-run `korlm pretrain-data` or copy the shard again") from None


def verify_shards(data_dir: str, metadata: dict[str, Any] | None = None,
                  files: list[str] | None = None) -> dict[str, int]:
    """Read every shard of ``data_dir`` with CRC checking; return ``{shard name: records}``.

    The shards are ``metadata["shards"]`` when the metadata lists them (each must exist),
    else ``files`` (or ``*.tfrecord``). When the metadata has ``examples_per_shard`` for
    the listed shards, each count must match. Raises CorruptShardError naming the shard.
    """
    if metadata is None:
        metadata = {}
        path = storage.join(data_dir, "metadata.json")
        if storage.exists(path):
            import json

            metadata = json.loads(storage.read_text(path))
    names = metadata.get("shards")
    if names:
        paths = [storage.join(data_dir, name) for name in names]
        for name, path in zip(names, paths, strict=True):
            if not storage.exists(path):
                raise CorruptShardError(f"pretraining data shard {name} listed in {data_dir}/metadata.json "
                                        "is missing; re-run `korlm pretrain-data`")
    else:
        paths = files if files is not None else storage.glob(storage.join(data_dir, "*.tfrecord"))
    expected = metadata.get("examples_per_shard") if names else None
    if expected is not None and len(expected) != len(paths):
        expected = None
    counts = {}
    for i, path in enumerate(paths):
        name = path.rsplit("/", 1)[-1]
        counts[name] = count_records(path)
        if expected is not None and counts[name] != expected[i]:
            raise CorruptShardError(
                f"pretraining data shard {name} holds {counts[name]} records but metadata.json says "
                f"{expected[i]}; the shard is incomplete or from another run (re-run `korlm pretrain-data`)")
    return counts
