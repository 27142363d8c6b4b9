"""What a pretraining run reports and writes while it trains: the Keras callback that logs
every ``log_every`` steps (``train_log.jsonl``, TensorBoard, the console or a progress
bar) and writes a checkpoint, then the training state, every ``checkpoint_every`` steps
and at the last step. At each checkpoint step it first scores the held-out slice
(``korlm.pretrain.heldout``, when the data has one): ``heldout_loss``,
``heldout_accuracy`` and the ``unigram_entropy`` floor go into that step's log record
(a checkpoint step is always logged then), TensorBoard and the checkpoint's
``korlm_checkpoint.json``."""

from __future__ import annotations

import os
import time

from korlm import storage
from korlm.modeling import checkpoints as ckpt
from korlm.modeling.electra import LOGGED as ELECTRA_LOGGED
from korlm.pretrain.optimizer import accuracy_name
from korlm.pretrain.state import (
    RESUME_KEYS,
    TENSORBOARD_DIR,
    TrainLog,
    optimizer_detached,
    prune_checkpoints,
    save_state,
    write_json_atomic,
)

PREEMPT_ENV = "KORLM_PREEMPT_AT_STEP"


def monitor_class():
    import keras

    class TrainMonitor(keras.callbacks.Callback):
        """Logs every ``log_every`` steps, checkpoints every ``checkpoint_every`` steps.

        ``fit`` counts micro-batches; with gradient accumulation an update (a step) is
        every ``micro_batches`` of them, and only update boundaries are acted on."""

        def __init__(self, *, run: dict, phase: dict, start_step: int, micro_per_epoch: int,
                     log: TrainLog, checkpoints: list[dict], writer, schedule, progress,
                     flops_per_token: float | None, peak_flops: float | None,
                     task, nsp_head=None, tokenizer_files=None, heldout=None):
            super().__init__()
            self.heldout = heldout  # korlm.pretrain.heldout.HeldOut or None
            self.tokenizer_files = tokenizer_files
            # What a checkpoint holds: the pretraining task (+ NSP head); the trained
            # model may be a wrapper around them.
            self.task, self.nsp_head = task, nsp_head
            self.run, self.phase, self.start_step = run, phase, start_step
            self.micro_per_epoch, self.micro = micro_per_epoch, run["grad_accum_steps"]
            self.log, self.checkpoints, self.writer = log, checkpoints, writer
            self.tokens_per_step = phase["batch_size"] * phase["max_seq_length"]
            self.schedule, self.progress = schedule, progress
            self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
            self.metric = accuracy_name(run["objective"])
            self.window_start = time.perf_counter()
            self.window_steps = 0
            self.last_loss: float | None = None
            preempt = os.environ.get(PREEMPT_ENV, "").strip()
            self.preempt_at = int(preempt) if preempt.isdigit() else None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_base = self.start_step * self.micro + epoch * self.micro_per_epoch

        def on_train_batch_end(self, batch, logs=None):
            micro = self.epoch_base + batch + 1
            if micro % self.micro:
                return
            run, step = self.run, micro // self.micro
            self.window_steps += 1
            if self.progress is not None:
                self.progress.update(1)
            is_log = step % run["log_every"] == 0 or step == run["steps"]
            is_ckpt = step % run["checkpoint_every"] == 0 or step == run["steps"]
            if is_log or is_ckpt:
                self.last_loss = float(logs["loss"])
            heldout = {}
            if is_ckpt and self.heldout is not None:
                scoring = time.perf_counter()
                heldout = self.heldout(self.task)
                self.window_start += time.perf_counter() - scoring  # speed = training only
            if is_log or heldout:
                self._log(step, logs, heldout)
            if is_ckpt:
                saving = time.perf_counter()
                self._checkpoint(step, heldout)
                self.window_start += time.perf_counter() - saving  # speed = training only
            if step >= self.phase["end_step"]:
                self.model.stop_training = True
            if self.preempt_at is not None and step >= self.preempt_at:
                # Fault injection for preemption tests: die like a reclaimed VM, no cleanup.
                print(f"{PREEMPT_ENV}={self.preempt_at}: killing the process after step {step}",
                      flush=True)
                os.kill(os.getpid(), 9)

        def _log(self, step: int, logs, heldout: dict | None = None) -> None:
            run = self.run
            loss, accuracy = float(logs["loss"]), float(logs[self.metric])
            seconds = max(time.perf_counter() - self.window_start, 1e-9)
            # The rate step `step` was taken with (the schedule counts from 0).
            lr = float(self.schedule((step - 1) * self.micro))
            tokens_per_second = self.window_steps * self.tokens_per_step / seconds
            record = {
                "step": step, "loss": round(loss, 5), self.metric: round(accuracy, 5),
                **{k: round(float(logs[k]), 5) for k in ("mlm_loss", "nsp_loss", "nsp_accuracy",
                                                         *ELECTRA_LOGGED) if k in logs},
                "learning_rate": lr, "max_seq_length": self.phase["max_seq_length"],
                # the (micro-)batch as split over the data-parallel replicas
                "devices": run.get("devices", 1),
                "per_device_batch": self.phase["batch_size"] // self.micro // run.get("devices", 1),
                "steps_per_second": round(self.window_steps / seconds, 3),
                # Sequence positions (batch x max_seq_length, padding included).
                "tokens_per_second": round(tokens_per_second, 1),
                "time": round(time.time(), 3),
                **(heldout or {}),
            }
            if self.flops_per_token:
                # 4 significant digits: a tiny model on a CPU runs at a few GFLOP/s.
                record["model_tflops_per_second"] = float(
                    f"{tokens_per_second * self.flops_per_token / 1e12:.4g}")
                if self.peak_flops:
                    record["mfu"] = float(
                        f"{tokens_per_second * self.flops_per_token / self.peak_flops:.4g}")
            self.log.append(record)
            if self.writer is not None:
                import tensorflow as tf

                with self.writer.as_default(step=step):
                    for key in ("loss", self.metric, "learning_rate", "tokens_per_second", "mfu",
                                "mlm_loss", "nsp_loss", "nsp_accuracy", "heldout_loss",
                                "heldout_accuracy", "unigram_entropy", *ELECTRA_LOGGED,
                                *(f"heldout_{k}" for k in ELECTRA_LOGGED)):
                        if key in record:
                            tf.summary.scalar(key, record[key])
                self.writer.flush()
            mfu = f" MFU {record['mfu']:.1%}" if "mfu" in record else ""
            nsp = (f" nsp_accuracy {record['nsp_accuracy']:.4f}" if "nsp_accuracy" in record else "")
            if "disc_loss" in record:  # ELECTRA: the generator's and the discriminator's parts
                nsp += (f" (mlm_loss {record['mlm_loss']:.4f} disc_loss {record['disc_loss']:.4f} "
                        f"disc_accuracy {record['disc_accuracy']:.4f})")
            line = (f"step {step}/{run['steps']} loss {loss:.4f} {self.metric} {accuracy:.4f}{nsp} "
                    f"lr {lr:.2e} {record['steps_per_second']:.2f} steps/s "
                    f"{record['tokens_per_second']:.0f} tokens/s{mfu}")
            if "heldout_loss" in record:
                line += (f" | held-out loss {record['heldout_loss']:.4f} accuracy "
                         f"{record['heldout_accuracy']:.4f}"
                         + (f" (unigram floor {record['unigram_entropy']:.4f})"
                            if "unigram_entropy" in record else "")
                         + (f", discriminator loss {record['heldout_disc_loss']:.4f} accuracy "
                            f"{record['heldout_disc_accuracy']:.4f}"
                            if "heldout_disc_loss" in record else ""))
            if self.progress is not None:
                self.progress.write(line)
            else:
                print(line, flush=True)
            self.model.reset_metrics()
            self.window_start = time.perf_counter()
            self.window_steps = 0

        def _checkpoint(self, step: int, heldout: dict | None = None) -> None:
            run = self.run
            uri = ckpt.checkpoint_path(run["output_dir"], step)
            info = {k: run[k] for k in RESUME_KEYS}
            info.update(step=step, train_loss=self.last_loss, objective=run["objective"],
                        **({"dropout": run["dropout"]} if "dropout" in run else {}),
                        **(heldout or {}))
            with optimizer_detached(self.task) as task:
                ckpt.save_checkpoint(task, uri, info, nsp_head=self.nsp_head,
                                       tokenizer_files=self.tokenizer_files)
            # The state follows the checkpoint: a kill between the two re-trains from the
            # previous state and overwrites this checkpoint with the same step
            # (choose_resume_state says so).
            examples = self.phase["examples_before"] + (
                step - self.phase["start_step"]) * self.phase["batch_size"]
            save_state(self.model, run["output_dir"],
                       {**info, "log_every": run["log_every"], "phase": self.phase["index"],
                        "examples_seen": examples,
                        "phase_examples_seen": (step - self.phase["start_step"]) * self.phase["batch_size"]})
            self.checkpoints[:] = [c for c in self.checkpoints if c["step"] < step]
            self.checkpoints.append({"step": step, "uri": uri})
            kept, dropped = prune_checkpoints(self.checkpoints, keep_last=run["keep_checkpoints"],
                                              keep_every=run["keep_checkpoint_every"],
                                              final_step=run["steps"])
            self.checkpoints[:] = kept
            write_json_atomic(storage.join(run["output_dir"], ckpt.CHECKPOINTS_JSON), self.checkpoints)
            for old in dropped:  # after checkpoints.json stops naming them
                storage.remove_tree(old["uri"])
            if storage.is_remote(run["output_dir"]):
                self.log.flush()
            msg = f"checkpoint {ckpt.checkpoint_name(step)} -> {uri}"
            if dropped:
                msg += f" (removed {', '.join(ckpt.checkpoint_name(c['step']) for c in dropped)})"
            if self.progress is not None:
                self.progress.write(msg)
            else:
                print(msg, flush=True)

    return TrainMonitor


VERTEX_TENSORBOARD_ENV = "AIP_TENSORBOARD_LOG_DIR"


def tensorboard_dir(output_dir: str) -> str:
    """Where TensorBoard events go: the folder Vertex AI names in ``AIP_TENSORBOARD_LOG_DIR``
    when the CustomJob has a Vertex TensorBoard attached (``pipeline.resources.pretrain.
    tensorboard``; Vertex uploads what is written there: https://cloud.google.com/vertex-ai/
    docs/experiments/tensorboard-training), else the run folder's ``tensorboard/``."""
    return os.environ.get(VERTEX_TENSORBOARD_ENV) or storage.join(output_dir, TENSORBOARD_DIR)


def summary_writer(output_dir: str):
    """TensorBoard event files (:func:`tensorboard_dir`); train_log.jsonl holds the same numbers."""
    try:
        import tensorboard  # noqa: F401  (tf.summary writes scalars only with it)
    except ImportError:
        print("WARNING: the tensorboard package is missing: no TensorBoard events are written "
              "(train_log.jsonl has the same figures)", flush=True)
        return None
    import tensorflow as tf

    where = tensorboard_dir(output_dir)
    if os.environ.get(VERTEX_TENSORBOARD_ENV):
        print(f"TensorBoard events -> {where} (Vertex AI TensorBoard)", flush=True)
    return tf.summary.create_file_writer(where)


def progress_bar(total: int, initial: int, show: str):
    """A tqdm bar on a terminal (``progress: auto``) or always (``bar``); log lines only
    (``lines``) or when stdout is not a terminal (KFP and Vertex logs)."""
    import sys

    if show == "lines" or (show == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)
