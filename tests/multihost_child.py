"""One process of tests/test_multihost.py's two-process JAX run on CPU.

Started with ``KERAS_DISTRIBUTION_JOB_ADDRESSES``/``NUM_PROCESSES``/``PROCESS_ID``,
``JAX_PLATFORMS=cpu``, ``KERAS_BACKEND=jax`` and 2 CPU devices a process; joins through
``korlm.pretrain.distribute.initialize_multihost`` and prints one ``RESULT {json}`` line:
the device counts, this process's input shards (gathered from every process), an
all-reduce, a replicated array read back on the host (what process 0 does to write a
checkpoint), and the weights after Keras ``DataParallel`` training steps in which each
process fed only its half of every global batch. Exit code 77: this jaxlib has no CPU
collectives (the test skips). TensorFlow is blocked: multi-host JAX must not need it.
``--tf-data``: TensorFlow allowed, and the training feeds a tf.data pipeline of global
batches through Keras's auto-sharding instead (run by hand: docs/training.md#multi-host).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from korlm.errors import KorlmError
from korlm.pretrain import distribute

SHARDS = [f"gs://bucket/data/shard-{i:05d}.tfrecord" for i in range(7)]
GLOBAL_BATCH, STEPS = 8, 3


def training_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")).astype("float32")
    return x, y


def train(process_index: int, process_count: int, tf_data: bool = False) -> tuple[list, list]:
    """A linear model trained STEPS steps under DataParallel over every device of every
    process. By default each process passes only its rows of each global batch (as
    per-host file shards would) with Keras's auto-sharding off; ``tf_data``: every process
    passes the same tf.data pipeline of global batches and Keras's auto-sharding (on by
    default) keeps each process's part. Returns the weights before and after."""
    import keras

    devices = distribute.resolve_strategy("auto")  # DataParallel over the global devices
    x, y = training_data()
    keras.utils.set_random_seed(0)
    with devices.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    before = [np.asarray(w).ravel().tolist() for w in model.get_weights()]
    if tf_data:
        import tensorflow as tf

        assert devices.strategy.auto_shard_dataset
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), epochs=1,
                  verbose=0)
    else:
        # Keras's auto-sharding wants a tf.data pipeline of global batches: off here.
        devices.strategy.auto_shard_dataset = False
        local = distribute.process_batch_size(GLOBAL_BATCH, process_count)
        rows = np.concatenate([np.arange(s * GLOBAL_BATCH + process_index * local,
                                         s * GLOBAL_BATCH + (process_index + 1) * local)
                               for s in range(STEPS)])
        model.fit(x[rows], y[rows], batch_size=local, epochs=1, shuffle=False, verbose=0)
    return before, [np.asarray(w).ravel().tolist() for w in model.get_weights()]


def main() -> None:
    tf_data = "--tf-data" in sys.argv[1:]
    if not tf_data:
        # TensorFlow is not needed (and takes seconds to import here); blocked only when
        # run as a process, not when the test imports this module for its data.
        sys.modules.setdefault("tensorflow", None)
    try:
        spec = distribute.initialize_multihost()
    except KorlmError as exc:
        if "gloo" in str(exc):
            print(f"SKIP {exc}", flush=True)
            sys.exit(77)
        raise
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    index, count = distribute.process_index_and_count()
    mine = distribute.process_shards(SHARDS)
    picked = np.zeros(len(SHARDS), "int32")
    picked[[SHARDS.index(f) for f in mine]] = 1
    everyone = np.asarray(multihost_utils.process_allgather(jnp.asarray(picked)))

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    local = np.full((jax.local_device_count(),), float(index + 1), "float32")
    global_array = multihost_utils.host_local_array_to_global_array(local, mesh, P("batch"))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(global_array)
    replicated = np.asarray(total)  # each process holds a copy of a replicated array

    distribute.sync_processes("before-training")
    initial, weights = train(index, count, tf_data)
    print("RESULT " + json.dumps({
        "source": spec.source if spec else None, "process_index": index, "process_count": count,
        "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
        "shards": mine, "picked_by_all": everyone.tolist(), "sum": float(replicated),
        "writer": distribute.is_checkpoint_writer(), "initial": initial, "weights": weights}),
          flush=True)
    distribute.sync_processes("end")


if __name__ == "__main__":
    main()
