"""Pretraining: TFRecord shards of token ids -> checkpoints every K steps (``run_pretrain``).

The input is ``korlm.pretrain.dataset``; the model ``korlm.modeling.build``'s pretraining
task; training is one ``model.fit`` call whose epochs are checkpoint-sized chunks, with a
callback (``korlm.pretrain.monitor``) that logs every ``log_every`` steps and writes a
checkpoint every ``checkpoint_every`` steps and at the last step. Devices, strategy and
precision come from ``korlm.pretrain.distribute``.

Every checkpoint carries a copy of the tokenizer (``checkpoints/step-N/tokenizer/``, its
vocab hash in ``korlm_checkpoint.json``), so later steps need only the checkpoint.

Resume: after every checkpoint the callback also writes ``state/step-N/`` (model weights,
optimizer variables including the step counter, the step itself, the data position) and
then deletes the older state. Re-running the same command continues from the newest
complete state (:func:`choose_resume_state`: half-written ones are skipped, a newer
checkpoint without a state is named and re-trained); a finished run re-run returns its
checkpoint list without training. Log lines written after the saved step (the work a kill
threw away) are dropped, so ``train_log.jsonl`` reads as one run.
"""

from __future__ import annotations

import json
import math
import os
import warnings

from korlm import storage
from korlm.errors import KorlmError
from korlm.modeling import build
from korlm.modeling import checkpoints as ckpt
from korlm.modeling.presets import size_config
from korlm.pretrain.dataset import (
    DEFAULT_SPECIAL_IDS,
    check_data_settings,
    data_features,
    has_nsp_labels,
    inspect_data,
    label_slots,
    make_dataset,
    tokenizer_vocab_hash,
)
from korlm.pretrain.monitor import monitor_class, progress_bar, summary_writer
from korlm.pretrain.optimizer import OPTIMIZERS, compile_pretraining
from korlm.pretrain.state import (
    RESUME_KEYS,
    RUN_ENTRIES,
    STATE_DIR,
    TrainLog,
    choose_resume_state,
    read_checkpoints,
    restore_state,
    write_json_atomic,
)


def _build_without_reading(model, dataset, batch_size: int) -> None:
    """Build the compiled loss and metrics from the dataset's spec. Otherwise the first
    ``fit`` of a process pulls (and loses) a batch to build them, and ``examples_seen``
    would be a batch short of the data position after every (re)start."""
    import numpy as np
    import tensorflow as tf

    def zeros(spec):
        shape = [d if d is not None else batch_size for d in spec.shape]
        return np.zeros(shape, spec.dtype.as_numpy_dtype)

    model._symbolic_build(data_batch=tf.nest.map_structure(zeros, dataset.element_spec))


def plan_phases(steps: int, batch_size: int, max_seq_length: int | None,
                phases: list[dict] | None) -> list[dict]:
    """The run as phases: ``[{index, start_step, end_step, batch_size, max_seq_length,
    examples_before}]``. Without ``phases`` one phase covers every step. With phases
    (the two-phase BERT recipe: most steps at 128 tokens, the rest at 512), their steps
    must add up to ``steps``; an unset ``batch_size`` takes the run's."""
    specs = phases or [{"steps": steps, "max_seq_length": max_seq_length, "batch_size": batch_size}]
    total = sum(int(p["steps"]) for p in specs)
    if total != steps:
        raise KorlmError(f"pretrain.phases add up to {total} steps but pretrain.steps is {steps}")
    plan, start, examples = [], 0, 0
    for i, spec in enumerate(specs):
        if int(spec["steps"]) <= 0:
            raise KorlmError(f"pretrain.phases[{i}].steps must be greater than 0")
        batch = int(spec.get("batch_size") or batch_size)
        plan.append({"index": i, "start_step": start, "end_step": start + int(spec["steps"]),
                     "batch_size": batch, "max_seq_length": spec.get("max_seq_length") or max_seq_length,
                     "examples_before": examples})
        examples += int(spec["steps"]) * batch
        start += int(spec["steps"])
    return plan


def phase_data_dir(data_dir: str, seq_len: int | None) -> str:
    """A phase's data: ``DATA/seq{N}`` when the pretraining data was also packed at that
    length (``pretrain_data.extra_seq_lengths``, listed in its ``seq_length_variants``),
    else ``DATA`` itself (examples longer than the phase's length are then cut)."""
    if not seq_len:
        return data_dir
    meta_path = storage.join(data_dir, "metadata.json")
    variants = {}
    if storage.exists(meta_path):
        try:
            variants = json.loads(storage.read_text(meta_path)).get("seq_length_variants") or {}
        except json.JSONDecodeError:
            return data_dir  # inspect_data names the corrupt file
    if str(seq_len) in variants:
        return storage.join(data_dir, variants[str(seq_len)])
    return data_dir


def _devices(strategy: str, tpu: str | None, precision: str, plan: list[dict], micro: int,
             hidden_dim: int):
    """Strategy and precision (``korlm.pretrain.distribute``), and the batch checked against the
    replicas before any model is built."""
    from korlm.pretrain import distribute

    dist = distribute.resolve_strategy(strategy, tpu=tpu)
    choice = distribute.set_precision(precision, dist, hidden_dim=hidden_dim)
    for phase in plan:
        distribute.check_batch(phase["batch_size"], dist.num_replicas, micro)
    return dist, choice


def _check_memory(dist, task, model: str, size: str, plan: list[dict], micro: int,
                  policy: str) -> None:
    """Refuse a per-replica batch that certainly does not fit the device's memory."""
    from korlm.modeling.presets import model_config
    from korlm.pretrain import distribute

    dims = model_config(model, size)
    layers = dims["num_layers"] * (2 if model == "bart" else 1)
    for phase in plan:
        distribute.check_train_memory(
            dist, params=int(task.count_params()),
            per_replica_batch=phase["batch_size"] // micro // dist.num_replicas,
            seq_len=phase["max_seq_length"], hidden=dims["hidden_dim"], layers=layers,
            precision=policy, heads=dims["num_heads"], intermediate=dims["intermediate_dim"])


def _flops_per_token(model: str, size: str, vocab_size: int, seq_len: int,
                     slots: int | None, mask_rate: float) -> float:
    from korlm.pretrain import distribute
    from korlm.pretrain.masking import default_max_predictions

    predictions = None
    if model != "bart":
        predictions = slots or default_max_predictions(seq_len, mask_rate)
    from korlm.modeling.presets import model_config

    if model == "electra":
        from korlm.pretrain.electra import flops_per_token

        return flops_per_token(size, vocab_size, seq_len, predictions)
    return distribute.model_flops_per_token(model, model_config(model, size), vocab_size, seq_len,
                                            mlm_predictions=predictions)


def _heldout(data_dir: str, first_phase: tuple, run: dict, max_examples: int, *, objective: str,
             model: str, model_seq_len: int, mask_rate: float, max_predictions: int | None,
             **noising):
    """The held-out slice of the run's data (``korlm.pretrain.heldout``), masked like the
    training data but with a fixed seed; None (said in the log) when there is none."""
    from korlm.pretrain.heldout import prepare_heldout, token_loss

    pdir, meta, _files, features, masking = first_phase
    if pdir != data_dir:  # a phase's seq<N> data: the slice of the run's own data instead
        meta = json.loads(storage.read_text(storage.join(data_dir, "metadata.json")))
    special_ids = {**DEFAULT_SPECIAL_IDS, **(meta.get("special_token_ids") or {})}
    make_batch_loss = token_loss
    if model == "electra":  # generator + discriminator: its own scoring
        from korlm.pretrain.electra import heldout_loss as make_batch_loss
    return prepare_heldout(
        data_dir, meta, max_examples=int(max_examples), objective=objective,
        model_seq_len=model_seq_len, replicas=run.get("devices", 1),
        vocab_size=run["vocab_size"], special_ids=special_ids,
        mask_rate=mask_rate, features=features, masking=masking,
        max_predictions=label_slots(meta, masking, max_predictions) if objective == "mlm" else None,
        static_mask_rate=meta.get("mask_rate"), segment_ids=build.uses_segment_ids(model),
        make_batch_loss=make_batch_loss, **noising)


def run_pretrain(data_dir: str, tokenizer_dir: str, output_dir: str, *, model: str = "bert",
                 size: str = "tiny", steps: int = 300, checkpoint_every: int = 100,
                 batch_size: int = 32, learning_rate: float = 5e-4, warmup_steps: int = 30,
                 weight_decay: float = 0.01, optimizer: str = "adamw", clip_norm: float = 1.0,
                 grad_accum_steps: int = 1, mask_rate: float = 0.15,
                 mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
                 whole_word: str = "none", max_predictions: int | None = None,
                 infill_rate: float = 0.3, poisson_lambda: float = 3.0,
                 permute_sentences: bool = False, ignore_nsp_labels: bool = False,
                 max_seq_length: int | None = None, phases: list[dict] | None = None,
                 keep_checkpoints: int | None = None, keep_checkpoint_every: int | None = None,
                 strategy: str = "auto", tpu: str | None = None, precision: str = "auto",
                 peak_tflops: float | None = None, deterministic: bool = False,
                 progress: str = "auto", seed: int = 0, log_every: int = 10,
                 dropout: float = 0.0, heldout_examples: int = 512,
                 overwrite: bool = False) -> list[dict]:
    """Pretrain a model from scratch; returns the checkpoint list (also in ``checkpoints.json``).

    ``model``: bert or roberta (masked LM), bart (denoising: text infilling and optional
    sentence permutation) or electra (a masked-LM generator + a replaced-token
    discriminator on the MLM batches, ``korlm.modeling.electra``), at ``size`` (``korlm.modeling.presets``). ``steps`` is the total number
    of optimizer updates of the run (``batch_size`` examples each, accumulated over
    ``grad_accum_steps`` micro-batches), so re-running with a larger value extends a
    finished run (the learning-rate schedule is then recomputed for the new total) and
    re-running with the same value after a kill continues where it stopped, at the same
    data position. ``phases`` splits the steps by sequence length (BERT: 90% at 128,
    10% at 512); the model is built for the longest.

    Masking: ``mask_rate`` of the maskable tokens (at most ``max_predictions``) are
    predicted, of which ``mask_token_rate`` become [MASK], ``random_token_rate`` a random
    token, the rest stay; ``whole_word`` (none|eojeol|morpheme) masks whole words. Static
    data brings its own masks. ``deterministic``: a killed and resumed run ends with the
    same weights as an uninterrupted one (op determinism, sequential input pipeline).

    ``dropout``: the backbone's dropout while pretraining (recorded in the checkpoint's
    ``config.json``; fine-tuning sets its own, ``evaluate.dropout``). ``heldout_examples``:
    how many examples of the data's held-out slice (``DATA/heldout/``) are scored at each
    checkpoint (``korlm.pretrain.heldout``; 0: none).

    ``output_dir`` must be new, empty or korlm's own pretraining run (resumed; with
    ``overwrite`` started again): a folder holding anything else is refused untouched.
    """
    if not storage.is_remote(output_dir):
        output_dir = os.path.abspath(output_dir)
    build.check_family(model)
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every),
                        ("batch_size", batch_size), ("log_every", log_every),
                        ("grad_accum_steps", grad_accum_steps)):
        if int(value) <= 0:
            raise KorlmError(f"{name} must be greater than 0, got {value}")
    if not 0 <= dropout < 1:
        raise KorlmError(f"dropout must be in [0, 1), got {dropout}")
    if max_predictions is not None and int(max_predictions) < 1:
        raise KorlmError(f"max_predictions must be at least 1, got {max_predictions}")
    if warmup_steps < 0 or learning_rate <= 0 or weight_decay < 0:
        raise KorlmError("learning_rate must be > 0, warmup_steps and weight_decay >= 0")
    if optimizer not in OPTIMIZERS:
        raise KorlmError(f"optimizer {optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if keep_checkpoints is not None and int(keep_checkpoints) < 1:
        raise KorlmError(f"keep_checkpoints must be at least 1 (or unset to keep all), got {keep_checkpoints}")
    try:
        size_config(size)
    except ValueError as exc:
        raise KorlmError(str(exc)) from None
    plan = plan_phases(int(steps), int(batch_size), max_seq_length, phases)
    for phase in plan:
        if phase["batch_size"] % int(grad_accum_steps):
            raise KorlmError(f"batch size {phase['batch_size']} does not split into "
                             f"grad_accum_steps={grad_accum_steps} equal micro-batches")

    objective = build.objective_of(model)
    # Each phase's data, checked before anything imports TensorFlow or writes.
    phase_inputs = []
    for phase in plan:
        pdir = phase_data_dir(data_dir, phase["max_seq_length"])
        meta, files = inspect_data(pdir, tokenizer_dir)
        data_len = int(meta["max_seq_length"])
        phase["max_seq_length"] = seq_len = int(phase["max_seq_length"] or data_len)
        if seq_len < 8:
            raise KorlmError(f"max_seq_length must be at least 8, got {seq_len}")
        if seq_len > data_len:
            raise KorlmError(f"max_seq_length {seq_len} is longer than the data's {data_len} "
                             f"({pdir}): no example would be longer than {data_len}; make data "
                             f"with `korlm pretrain-data --max-seq-length {seq_len}`")
        if seq_len < data_len:
            print(f"WARNING: phase {phase['index'] + 1} trains at {seq_len} tokens on data packed "
                  f"at {data_len} ({pdir}): longer examples are cut and their tail is never "
                  f"trained on; pack at {seq_len} too (pretrain_data.extra_seq_lengths)", flush=True)
        phase_inputs.append((pdir, meta, files))
    first_meta = phase_inputs[0][1]
    for pdir, meta, _ in phase_inputs[1:]:
        if int(meta["vocab_size"]) != int(first_meta["vocab_size"]):
            raise KorlmError(f"{pdir} was made with another vocabulary than {phase_inputs[0][0]}")

    # The run folder: new, empty or korlm's own run (see RUN_ENTRIES); checked before
    # TensorFlow loads, claimed (marked) once every setting has been checked.
    storage.check_run_dir(output_dir, "pretrain", RUN_ENTRIES, inputs=[data_dir, tokenizer_dir],
                          overwrite=overwrite)

    # After the data checks: these import TensorFlow, which is slow and noisy on stderr.
    from korlm.pretrain.masking import check_rates
    from korlm.pretrain.noising import check_noising

    check_rates(mask_rate, mask_token_rate, random_token_rate)
    check_noising(infill_rate, poisson_lambda)
    prepared = []
    for pdir, meta, files in phase_inputs:
        features = data_features(meta, files)
        masking = check_data_settings(pdir, meta, features, objective=objective,
                                      whole_word=whole_word, permute_sentences=permute_sentences,
                                      ignore_nsp_labels=ignore_nsp_labels, model=model)
        if masking == "static":
            print(f"{pdir} is statically masked (dupe_factor {meta.get('dupe_factor')}): using its "
                  "masks; mask_rate, mask_token_rate, random_token_rate and whole_word do not apply",
                  flush=True)
        prepared.append((pdir, meta, files, features, masking))
    model_seq_len = max(p["max_seq_length"] for p in plan)
    labelled = {has_nsp_labels(p[1], p[3]) for p in prepared}
    if len(labelled) > 1:
        raise KorlmError("some phases' data have next-sentence labels and some do not; make all "
                         "phases' data with the same pretrain_data.nsp")
    nsp = labelled == {True} and not ignore_nsp_labels
    run = {
        "output_dir": output_dir, "model": model, "size": size, "objective": objective,
        "vocab_size": int(first_meta["vocab_size"]),
        "vocab_hash": first_meta.get("vocab_hash") or tokenizer_vocab_hash(tokenizer_dir),
        "max_seq_length": model_seq_len, "grad_accum_steps": int(grad_accum_steps),
        "steps": int(steps), "checkpoint_every": int(checkpoint_every),
        "log_every": int(log_every), "keep_checkpoints": keep_checkpoints,
        "keep_checkpoint_every": keep_checkpoint_every, "nsp": nsp, "dropout": float(dropout),
    }
    # Every checkpoint carries the tokenizer (read once here, written into each).
    tokenizer_files = ckpt.read_tokenizer_files(tokenizer_dir)

    claim = storage.claim_run_dir(output_dir, "pretrain", RUN_ENTRIES,
                                  inputs=[data_dir, tokenizer_dir], overwrite=overwrite)
    if claim == "replace":
        print(f"{output_dir}: --overwrite: the earlier run's checkpoints, state and logs were "
              "removed; training starts again", flush=True)
    # what a killed run of this folder was writing (a checkpoint's or a state's staging
    # folder is found and reported by choose_resume_state)
    storage.remove_stale_staging(output_dir, STATE_DIR)
    state, resume_dir = choose_resume_state(output_dir)
    start_step = 0
    if state is not None:
        for key in RESUME_KEYS:
            if key in state and state.get(key) != run[key]:
                raise KorlmError(
                    f"{output_dir} holds a run with {key}={state.get(key)!r}, not {run[key]!r}; "
                    "use a new --output or the original settings to resume")
        start_step = int(state["step"])
    checkpoints = [c for c in read_checkpoints(output_dir) if c["step"] <= start_step]
    if start_step >= steps:
        print(f"{output_dir} already trained to step {start_step}; nothing to do", flush=True)
        storage.mark_complete(output_dir)
        return checkpoints

    import keras

    policy_before = keras.mixed_precision.global_policy().name
    try:
        checkpoints = _train(**locals())
    except BaseException:
        if claim in ("new", "empty"):  # e.g. no GPU for strategy gpu: leave no run folder
            storage.release_run_dir(output_dir, remove_folder=claim == "new")
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
    storage.mark_complete(output_dir)
    return checkpoints


def _train(*, data_dir, tokenizer_dir, output_dir, model, size, steps, checkpoint_every,
           batch_size, learning_rate, warmup_steps, weight_decay, optimizer, clip_norm,
           grad_accum_steps, mask_rate, mask_token_rate, random_token_rate, whole_word,
           max_predictions, infill_rate, poisson_lambda, permute_sentences, plan, prepared,
           run, state, resume_dir, start_step, checkpoints, tokenizer_files, strategy, tpu,
           precision, peak_tflops, deterministic, progress, seed, objective, model_seq_len,
           nsp, dropout, heldout_examples, **_unused) -> list[dict]:
    from korlm.modeling.presets import model_config

    dist, precision_choice = _devices(strategy, tpu, precision, plan, int(grad_accum_steps),
                                      model_config(model, size)["hidden_dim"])
    import keras

    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    with dist.scope():
        task = build.build_pretraining_task(model, size, run["vocab_size"], model_seq_len,
                                            dropout=dropout)
        # With next-sentence labels BERT trains both heads; checkpoints save the MLM task
        # (and the NSP layer beside it), the state the whole trained model.
        trained, nsp_head = build.add_next_sentence_head(task) if nsp else (task, None)
        # ELECTRA's model brings its own loss and metrics (korlm.modeling.electra).
        compile_task = compile_pretraining
        if model == "electra":
            from korlm.pretrain.electra import compile_electra as compile_task
        schedule = compile_task(
            trained, objective=objective, nsp=nsp, learning_rate=learning_rate, warmup_steps=warmup_steps,
            total_steps=steps, weight_decay=weight_decay, optimizer=optimizer,
            clip_norm=clip_norm, grad_accum_steps=int(grad_accum_steps),
            # XLA where it pays: under JAX always, on TF GPUs/TPUs; on a TF CPU it
            # compiled for long and ran no faster here.
            jit_compile=dist.jit_compile)
    _check_memory(dist, task, model, size, plan, int(grad_accum_steps), precision_choice.policy)
    if start_step:
        restore_state(trained, resume_dir, start_step,
                      state.get("seed_states") if deterministic else None)
        print(f"resuming {output_dir} from step {start_step}", flush=True)
    if not deterministic:
        # A resumed run sees fresh masks and dropout, not a replay of the first steps'.
        keras.utils.set_random_seed(seed + start_step)

    storage.makedirs(output_dir)
    log = TrainLog(output_dir, keep_until_step=start_step)
    write_json_atomic(storage.join(output_dir, ckpt.CHECKPOINTS_JSON), checkpoints)
    writer = summary_writer(output_dir)
    # MFU's denominator: pretrain.peak_tflops per device, or the table's figure for the
    # device and precision (None on a CPU: no MFU is logged).
    peak = dist.peak_flops(precision_choice.policy,
                           override=peak_tflops * 1e12 if peak_tflops else None)
    params = trained.count_params()
    # Each global (micro-)batch is split over the replicas: logged, so a run shows how.
    run["devices"] = dist.num_replicas
    per_device = batch_size // int(grad_accum_steps) // dist.num_replicas
    print(f"pretraining {model}-{size}{' with the next-sentence head' if nsp else ''} "
          f"({params:,} params) on {dist.describe()}, "
          f"{precision_choice.policy} ({precision_choice.reason}): steps "
          f"{start_step + 1}..{steps}, batch {batch_size}"
          + (f" in {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else "")
          + f" ({per_device} per device x {dist.num_replicas})"
          + ", phases " + ", ".join(f"{p['end_step'] - p['start_step']} steps x seq "
                                    f"{p['max_seq_length']}" for p in plan), flush=True)
    heldout = _heldout(data_dir, prepared[0], run, heldout_examples, objective=objective,
                       model=model, model_seq_len=model_seq_len, mask_rate=mask_rate,
                       mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                       whole_word=whole_word, max_predictions=max_predictions,
                       infill_rate=infill_rate, poisson_lambda=poisson_lambda,
                       permute_sentences=permute_sentences)
    progress = progress_bar(int(steps), start_step, progress)
    special_fallback = DEFAULT_SPECIAL_IDS
    try:
        for phase, (pdir, meta, files, features, masking) in zip(plan, prepared, strict=True):
            if phase["end_step"] <= start_step:
                continue
            first = max(start_step, phase["start_step"])
            seq_len, batch = phase["max_seq_length"], phase["batch_size"]
            micro_batch = batch // int(grad_accum_steps)
            special_ids = {**special_fallback, **(meta.get("special_token_ids") or {})}
            print(f"phase {phase['index'] + 1}/{len(plan)}: steps {first + 1}..{phase['end_step']} "
                  f"at seq {seq_len} from {pdir} ({len(files)} shards, {meta['num_examples']:,} "
                  "examples)", flush=True)
            dataset = make_dataset(
                files, batch_size=micro_batch, max_seq_length=seq_len,
                vocab_size=run["vocab_size"], special_ids=special_ids, mask_rate=mask_rate,
                seed=seed + phase["index"], data_max_seq_length=int(meta["max_seq_length"]),
                objective=objective, features=features, masking=masking,
                mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                whole_word=whole_word, max_predictions=label_slots(meta, masking, max_predictions),
                static_mask_rate=meta.get("mask_rate"), infill_rate=infill_rate,
                poisson_lambda=poisson_lambda, permute_sentences=permute_sentences,
                segment_ids=build.uses_segment_ids(model), sequential=deterministic, nsp=nsp,
                skip_examples=(first - phase["start_step"]) * batch)
            if model == "electra":  # the discriminator's labels need the original tokens
                from korlm.pretrain.electra import labels_in_inputs

                dataset = labels_in_inputs(dataset)
            remaining = phase["end_step"] - first
            chunk = min(int(checkpoint_every), remaining)
            micro = int(grad_accum_steps)
            monitor = monitor_class()(
                run=run, phase=phase, start_step=first, micro_per_epoch=chunk * micro, log=log,
                checkpoints=checkpoints, writer=writer, schedule=schedule, progress=progress,
                flops_per_token=_flops_per_token(model, size, run["vocab_size"], seq_len,
                                                 label_slots(meta, masking, max_predictions)
                                                 if objective == "mlm" else None, mask_rate),
                peak_flops=peak, task=task, nsp_head=nsp_head, tokenizer_files=tokenizer_files,
                heldout=heldout)
            _build_without_reading(trained, dataset, micro_batch)
            with warnings.catch_warnings():
                # The pooler is part of BERT's backbone but not of the MLM loss.
                warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
                trained.fit(dataset, steps_per_epoch=chunk * micro,
                         shuffle=False, epochs=math.ceil(remaining / chunk), callbacks=[monitor],
                         verbose=0)
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
    return list(checkpoints)
