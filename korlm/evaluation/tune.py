"""Hyperparameter search over fine-tuning with Optuna (``korlm tune``).

Each trial is one :func:`korlm.evaluation.evaluate.fine_tune` call with hyperparameters sampled from
``tune.search_space``; every other setting comes from the evaluate section (and its
``per_task`` entry for the task). After each epoch the trial reports its dev value of
the tuned metric to Optuna, which may prune it (``optuna.TrialPruned`` raised from the
epoch callback ends the fine-tuning). A trial's objective is its best dev value over its
epochs, which is the epoch whose weights fine-tuning keeps: the test split is never
read by the search, so the test score of the chosen settings stays an honest estimate.

Workers that share ``tune.storage`` and ``tune.study_name`` run trials of one study at
the same time (on a cluster: one pod per worker); each writes a summary of the whole
study as it stands when it finishes, and ``report_only`` writes it again at the end
without running trials.
"""

from __future__ import annotations

import datetime
import inspect
import json
import math
import os
import time
import warnings
from typing import Any

import yaml

from korlm import storage
from korlm.config import TuneSection
from korlm.errors import KorlmError

STUDY_JSON = "study.json"
BEST_PARAMS_YAML = "best_params.yaml"
IMPORTANCE_MD = "importance.md"
SUMMARY_MD = "summary.md"
HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "param_importances.png"
# Optuna's fANOVA evaluator (its default) needs scikit-learn, which korlm does not pin;
# PED-ANOVA needs only numpy. It scores how far each hyperparameter's distribution in the
# best trials departs from its distribution over all complete trials.
IMPORTANCE_QUANTILE = 0.25
IMPORTANCE_EVALUATOR = (f"PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target_quantile "
                        f"{IMPORTANCE_QUANTILE}: the best quarter of complete trials against all of them)")
# What SQLAlchemy says when workers race to create a new study database's schema.
_SCHEMA_RACE = ("UNIQUE constraint", "locked", "already exists")
# evaluate-section keys that are not fine_tune keyword arguments
_NOT_FINE_TUNE = ("tasks", "data_dir", "parallelism", "per_task")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _section(tune: TuneSection | dict[str, Any]) -> TuneSection:
    if isinstance(tune, TuneSection):
        return tune
    from korlm.config import validate

    return validate({"tune": tune}, source="tune settings").tune


def redact_storage(url: str | None) -> str | None:
    """The storage URL without its password (it goes into study.json and logs)."""
    if not url or url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (an unparsable URL is reported by open_study)
        return url.split("@", 1)[-1] if "@" in url else url


def _storage(url: str | None):
    """None: in memory (one process); ``journal:///path``: Optuna's journal file, safe
    for several processes on one machine or a shared file system; anything else: an
    SQLAlchemy URL (``sqlite:///study.db``, ``postgresql://user:pw@host/db``)."""
    if url is None:
        return None
    optuna = _optuna()
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise KorlmError(f"tune.storage {url!r}: expected journal:///path/to/study.log")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(path))
    import random

    error: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeat is "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a worker killed mid-trial (a pod evicted) leaves its trial RUNNING; the
                # heartbeat marks it failed after grace_period instead
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as exc:  # noqa: BLE001 (SQLAlchemy raises many kinds; one line says which)
            error = exc
            if not any(sign in str(exc) for sign in _SCHEMA_RACE):
                break
            # Workers started together race to create the schema of a new database: the
            # losers find it half made (a table another worker created between Optuna's
            # check and its CREATE TABLE, a version row already inserted, the file locked);
            # a moment later it is complete.
            time.sleep((attempt + 1) * (0.5 + random.random()))
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise KorlmError(f"tune.storage {redact_storage(url)!r} cannot be opened: {first}")


def _sampler(section: TuneSection, worker_index: int):
    optuna = _optuna()
    # Workers of one study need different seeds, or they would sample the same points.
    seed = section.seed + worker_index
    if section.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, section.n_trials // 3)))


def _pruner(section: TuneSection):
    optuna = _optuna()
    if section.pruner == "none":
        return optuna.pruners.NopPruner()
    if section.pruner == "threshold":
        bound = {"lower" if section.direction == "maximize" else "upper": section.prune_below}
        return optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=section.pruner_warmup_epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=section.pruner_startup_trials,
                                       n_warmup_steps=section.pruner_warmup_epochs)


def open_study(section: TuneSection, worker_index: int = 0, create: bool = True):
    """The study named ``tune.study_name`` in ``tune.storage`` (created if missing)."""
    optuna = _optuna()
    if not create and not section.storage:
        raise KorlmError("--report-only needs tune.storage (--storage): a study kept in memory "
                         "ends with the process that ran it")
    store = _storage(section.storage)
    if not create:
        try:
            return optuna.load_study(study_name=section.study_name, storage=store,
                                     sampler=_sampler(section, worker_index), pruner=_pruner(section))
        except KeyError:
            raise KorlmError(f"no study {section.study_name!r} in {redact_storage(section.storage)}") from None
    study = optuna.create_study(study_name=section.study_name, storage=store, load_if_exists=True,
                                direction=section.direction, sampler=_sampler(section, worker_index),
                                pruner=_pruner(section))
    if study.direction.name.lower() != section.direction:
        raise KorlmError(f"study {section.study_name!r} in {redact_storage(section.storage)} was "
                         f"created to {study.direction.name.lower()}, tune.direction is {section.direction}")
    return study


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """One point of the search space (``{name: TuneParameter}``)."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log,
                                             step=int(p.step) if p.step else 1)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    return params


def fine_tune_settings(evaluate_params: dict[str, Any], task: str) -> dict[str, Any]:
    """The fixed fine-tuning keyword arguments of every trial: the evaluate section's
    values with ``per_task[task]`` applied, limited to what ``fine_tune`` takes."""
    from korlm.evaluation.evaluate import fine_tune, settings_for_task

    accepted = set(inspect.signature(fine_tune).parameters) - {"epoch_callback"}
    params = settings_for_task(evaluate_params, task)
    return {k: v for k, v in params.items() if k in accepted and k not in _NOT_FINE_TUNE}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def run_tuning(checkpoint_dir: str, tokenizer_dir: str | None, data_dir: str | None, output_dir: str, *,
               tune: TuneSection | dict[str, Any], evaluate_params: dict[str, Any] | None = None,
               task: str | None = None, worker_index: int = 0,
               report_only: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run ``tune.n_trials`` trials (none with ``report_only``) of the study and write its
    summary (study.json, best_params.yaml, importance.md, summary.md, PNG plots) to
    ``output_dir``. ``tokenizer_dir``: None for the checkpoint's own tokenizer, else an
    override checked by vocab hash (:func:`korlm.modeling.checkpoints.resolve_tokenizer`).
    ``evaluate_params``: the evaluate section's settings (fixed for every trial unless
    searched); ``task`` overrides ``tune.task``. ``output_dir`` is checked before any
    trial (``overwrite`` replaces an earlier tune output). Returns study.json's content."""
    from korlm.evaluation import tasks
    from korlm.modeling.checkpoints import resolve_tokenizer

    where = {"inputs": [checkpoint_dir, tokenizer_dir], "containers": [data_dir]}
    storage.check_output(output_dir, "tune", overwrite=overwrite, **where)
    section = _section(tune)
    if task:
        section = section.model_copy(update={"task": task})
    spec = tasks.get_task(section.task)  # unknown task: a clear error before any trial
    metric = section.metric or spec.metric
    if metric not in spec.metrics:
        raise KorlmError(f"tune.metric {metric!r} is not a metric of task {spec.name} "
                         f"({', '.join(spec.metrics)})")
    fixed = fine_tune_settings(evaluate_params or {}, section.task)
    for name in section.search_space:
        fixed.pop(name, None)
    optuna = _optuna()
    study = open_study(section, worker_index, create=not report_only)
    started = time.perf_counter()
    if report_only:  # the settings the trials ran with, not this command's
        fixed = study.user_attrs.get("fixed_settings", fixed)
    else:
        # A missing checkpoint or a wrong tokenizer fails once, not per trial.
        tokenizer_dir = resolve_tokenizer(checkpoint_dir, tokenizer_dir)
        study.set_user_attr("fixed_settings", json.loads(json.dumps(fixed, default=str)))
        from korlm.evaluation.evaluate import fine_tune

        def objective(trial) -> float:
            params = suggest(trial, section.search_space)
            history: list[dict[str, Any]] = []

            def on_epoch(epoch: int, scores: dict[str, Any], _primary: float) -> None:
                value = scores.get(metric)
                history.append({"epoch": epoch, metric: value if _finite(value) else None})
                trial.set_user_attr("dev_history", history)
                if not _finite(value):  # undefined this epoch (e.g. constant predictions)
                    return
                trial.report(float(value), epoch)
                if trial.should_prune():
                    trial.set_user_attr("pruned_at_epoch", epoch)
                    raise optuna.TrialPruned(f"dev {metric} {value:.4f} at epoch {epoch}")

            try:
                result = fine_tune(checkpoint_dir, tokenizer_dir, section.task, data_dir,
                                   epoch_callback=on_epoch, **fixed, **params)
                values = [e["dev"].get(metric) for e in result.record["dev_history"]]
            except KorlmError as exc:
                trial.set_user_attr("error", str(exc))
                raise
            finally:
                _release_models()
            defined = [v for v in values if _finite(v)]
            if not defined:
                trial.set_user_attr("error", f"dev {metric} is undefined at every epoch")
                raise KorlmError(trial.user_attrs["error"])
            best = max(defined) if section.direction == "maximize" else min(defined)
            trial.set_user_attr("best_epoch", values.index(best) + 1)
            return float(best)

        def log_trial(study, trial) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                outcome = f"complete, dev {metric} {trial.value:.4f}"
            elif trial.state == optuna.trial.TrialState.PRUNED:
                outcome = (f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch')} "
                           f"(dev {metric} {trial.value:.4f})" if _finite(trial.value) else "pruned")
            else:
                outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', '')}"
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
            print(f"tune trial {trial.number}: {outcome} ({shown}; {_seconds(trial):.1f} s)", flush=True)

        study.optimize(objective, n_trials=section.n_trials, timeout=section.timeout_s,
                       catch=(KorlmError,), callbacks=[log_trial], gc_after_trial=True)
    summary = summarize(study, section, metric, fixed, redact_storage(section.storage))
    summary["worker"] = {"index": worker_index, "seconds": round(time.perf_counter() - started, 2),
                         "report_only": report_only}
    if not report_only and summary["counts"].get("complete", 0) == 0:
        errors = [t.get("error") for t in summary["trials"] if t.get("error")]
        if errors or not summary["counts"].get("pruned"):
            raise KorlmError("no trial completed" + (f"; first error: {errors[0]}" if errors else ""))
    write_outputs(study, summary, output_dir, overwrite=overwrite, **where)
    return summary


def _release_models() -> None:
    """Free the last trial's model (a study builds one per trial)."""
    import gc

    try:
        import keras

        keras.backend.clear_session()
    except ImportError:
        pass
    gc.collect()


def _seconds(trial) -> float:
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or datetime.datetime.now()
    return (end - trial.datetime_start).total_seconds()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _importance(study) -> tuple[dict[str, float] | None, str | None]:
    optuna = _optuna()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials, the study has {len(complete)}"
    if len({t.value for t in complete}) < 2:
        return None, "every complete trial has the same value, nothing to attribute"
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_QUANTILE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small studies: a warning per call, the note says so
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return None, str(exc).splitlines()[0]
    return {k: float(v) for k, v in found.items()}, None


def summarize(study, section: TuneSection, metric: str, fixed: dict[str, Any],
              storage_url: str | None) -> dict[str, Any]:
    """study.json's content: settings, every trial and the best one."""
    optuna = _optuna()
    trials = []
    counts: dict[str, int] = {}
    for t in study.trials:
        state = t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
        # Optuna gives a pruned trial its last reported value; only a complete trial has
        # an objective value (its pruned dev values are in dev_history).
        complete = t.state == optuna.trial.TrialState.COMPLETE and _finite(t.value)
        row = {"number": t.number, "state": state, "value": t.value if complete else None,
               "params": t.params, "duration_s": round(_seconds(t), 2),
               "dev_history": t.user_attrs.get("dev_history", [])}
        for key in ("best_epoch", "pruned_at_epoch", "error"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        if state == "fail" and "error" not in row:
            row["error"] = getattr(t, "system_attrs", {}).get("fail_reason", "failed")
        trials.append(row)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    importance, why_not = _importance(study)
    return {
        "study_name": section.study_name,
        "storage": storage_url,
        "task": section.task,
        "metric": metric,
        "direction": section.direction,
        "objective": f"best dev {metric} over a trial's epochs (the epoch whose weights "
                     "fine-tuning keeps); the test split is never used by the search",
        "sampler": section.sampler,
        "pruner": section.pruner,
        "search_space": {k: v.model_dump(exclude_none=True) for k, v in section.search_space.items()},
        "fixed_settings": fixed,
        "counts": counts,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_trial": best.number if best else None,
        "importance": importance,
        "importance_evaluator": IMPORTANCE_EVALUATOR,
        "importance_note": why_not,
        "trials": trials,
    }


def best_params_yaml(summary: dict[str, Any]) -> str:
    """The best trial's hyperparameters as an ``evaluate:`` config section, loadable with
    ``--config`` by ``korlm finetune`` / ``korlm evaluate`` (the fixed settings the trials
    shared are included, so the file reproduces the best trial)."""
    settings = {**summary["fixed_settings"], **(summary["best_params"] or {})}
    header = (f"# korlm tune: study {summary['study_name']}, task {summary['task']}, best trial "
              f"{summary['best_trial']}, dev {summary['metric']} {_fmt(summary['best_value'])}\n"
              f"# use: korlm finetune --config {BEST_PARAMS_YAML} ...\n")
    return header + yaml.safe_dump({"evaluate": settings}, sort_keys=False, allow_unicode=True)


def summary_markdown(summary: dict[str, Any]) -> str:
    names = list(summary["search_space"])
    lines = [f"# Hyperparameter search: {summary['study_name']} ({summary['task']})", "",
             f"Objective: {summary['objective']} ({summary['direction']}).",
             f"Sampler {summary['sampler']}, pruner {summary['pruner']}; trials: "
             + ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) + ".", ""]
    if summary["best_trial"] is not None:
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in summary["best_params"].items())
        lines += [f"**Best: trial {summary['best_trial']}, dev {summary['metric']} "
                  f"{summary['best_value']:.4f}** ({best}).", ""]
    else:
        lines += ["No trial completed.", ""]
    lines += ["| trial | state | dev " + summary["metric"] + " | " + " | ".join(names)
              + " | epochs run | seconds |",
              "|---:|---|---:|" + "---:|" * len(names) + "---:|---:|"]
    for t in summary["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        if t["number"] == summary["best_trial"]:
            value = f"**{value}**"
        state = t["state"]
        if "pruned_at_epoch" in t:
            state += f" at epoch {t['pruned_at_epoch']}"
        cells = [_fmt(t["params"].get(n, "")) for n in names]
        lines.append(f"| {t['number']} | {state} | {value} | " + " | ".join(cells)
                     + f" | {len(t['dev_history'])} | {t['duration_s']:.1f} |")
    errors = [t for t in summary["trials"] if t.get("error")]
    if errors:
        lines += ["", "Failed trials:"] + [f"- trial {t['number']}: {t['error']}" for t in errors]
    lines += ["", f"Importance: see {IMPORTANCE_MD}; plots {HISTORY_PNG}, {IMPORTANCE_PNG}."]
    return "\n".join(lines) + "\n"


def _importance_md(summary: dict[str, Any]) -> str:
    lines = ["# Hyperparameter importance", "",
             f"Evaluator: {summary['importance_evaluator']}; normalised to sum to 1. Over "
             f"{summary['counts'].get('complete', 0)} complete trials: with fewer than about 20 "
             "the ranking is a rough hint, not a measurement.", ""]
    if summary["importance"] is None:
        return "\n".join(lines + [f"Not computed: {summary['importance_note']}."]) + "\n"
    lines += ["| hyperparameter | importance |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["importance"].items()]
    return "\n".join(lines) + "\n"


def _plots(summary: dict[str, Any], out_dir: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    metric = summary["metric"]
    fig = Figure(figsize=(6.4, 4))
    ax = fig.add_subplot()
    done = [t for t in summary["trials"] if t["state"] == "complete" and t["value"] is not None]
    pruned = [t for t in summary["trials"] if t["state"] == "pruned" and t["dev_history"]]
    if done:
        ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", label="complete")
        best, running = [], None
        pick = max if summary["direction"] == "maximize" else min
        for t in done:
            running = t["value"] if running is None else pick(running, t["value"])
            best.append(running)
        ax.step([t["number"] for t in done], best, where="post", label="best so far")
    if pruned:
        last = [[h[metric] for h in t["dev_history"] if h[metric] is not None] for t in pruned]
        shown = [(t["number"], v[-1]) for t, v in zip(pruned, last, strict=True) if v]
        if shown:
            ax.plot([n for n, _ in shown], [v for _, v in shown], "x", color="grey",
                    label="pruned (last dev value)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{summary['study_name']}: optimization history")
    if done or pruned:
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, HISTORY_PNG), dpi=100)

    fig = Figure(figsize=(6.4, 3))
    ax = fig.add_subplot()
    if summary["importance"]:
        names = list(summary["importance"])[::-1]
        ax.barh(names, [summary["importance"][n] for n in names])
        ax.set_xlabel("importance (PED-ANOVA)")
    else:
        ax.text(0.5, 0.5, f"not computed: {summary['importance_note']}", ha="center", va="center",
                wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("hyperparameter importance")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, IMPORTANCE_PNG), dpi=100)


def write_outputs(study, summary: dict[str, Any], output_dir: str, *,
                  inputs: list[str | None] = (), containers: list[str | None] = (),
                  overwrite: bool = False) -> None:
    """study.json, best_params.yaml (when a trial completed), importance.md, summary.md and
    the two plots, published together."""
    with storage.atomic_output_dir(output_dir, "tune", inputs=inputs, containers=containers,
                                   overwrite=overwrite) as staging:
        with open(os.path.join(staging, STUDY_JSON), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False, default=str)
        if summary["best_params"] is not None:
            with open(os.path.join(staging, BEST_PARAMS_YAML), "w", encoding="utf-8") as f:
                f.write(best_params_yaml(summary))
        with open(os.path.join(staging, IMPORTANCE_MD), "w", encoding="utf-8") as f:
            f.write(_importance_md(summary))
        with open(os.path.join(staging, SUMMARY_MD), "w", encoding="utf-8") as f:
            f.write(summary_markdown(summary))
        _plots(summary, staging)
