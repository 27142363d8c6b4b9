"""The ``korlm`` command line: one subcommand per pipeline step, plus ``pipeline``.

Every subcommand takes ``--config FILE`` (the same schema the pipeline reads); flags
override the file. Heavy libraries are imported only by the subcommand that runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from korlm import config as cfg
from korlm.errors import KorlmError


def _print_result(title: str, result: Any) -> None:
    print(f"{title}:")
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


def _load(args: argparse.Namespace, overrides: dict[str, Any]) -> cfg.Config:
    conf = cfg.load(args.config)
    return cfg.apply_overrides(conf, overrides)


def _overwrite(args: argparse.Namespace, conf: cfg.Config | None = None) -> bool:
    """--overwrite, else run.overwrite of --config."""
    if getattr(args, "overwrite", False):
        return True
    return bool((conf or cfg.load(args.config)).run.overwrite)


def _clean_inputs(args: argparse.Namespace, conf: cfg.Config) -> list[Any]:
    """The inputs of ``korlm clean``, in the config's terms (``{path, format, field}``):
    each ``--input`` is a path/glob (taking ``--format``/``--field``) or a YAML mapping
    ``{path: ..., format: ..., field: ...}``; without ``--input``, ``clean.inputs``."""
    if not args.input:
        if args.format or args.field:
            raise KorlmError("--format and --field apply to --input paths; in a config set them per "
                             "input (clean.inputs: [{path: ..., format: ..., field: ...}])")
        return [i.model_dump(exclude_none=True) for i in conf.clean.inputs]
    inputs = []
    for item in args.input:
        if item.lstrip().startswith("{"):
            try:
                data = yaml.safe_load(item)
            except yaml.YAMLError:
                data = None
            if not isinstance(data, dict):
                raise KorlmError(f"--input {item}: not a YAML mapping; quote the whole input, "
                                 "e.g. --input '{path: data/a.tsv, field: review}'")
            spec = cfg.clean_input(data, source=f"--input {item}")
        else:
            spec = cfg.clean_input({"path": item, "format": args.format, "field": args.field},
                                   source=f"--input {item}")
        inputs.append(spec.model_dump(exclude_none=True))
    return inputs


def cmd_clean(args: argparse.Namespace) -> None:
    conf = _load(args, {})
    inputs = _clean_inputs(args, conf)
    if not inputs:
        raise KorlmError("clean needs inputs: pass --input PATH... or list clean.inputs in --config")
    options = conf.clean.model_dump(exclude={"inputs", "beam_options"}, exclude_none=True)
    if args.dry_run:
        from korlm.clean.beam import clean_in_process, nothing_kept_error

        report = clean_in_process(inputs, max_records_per_file=args.dry_run_records,
                                  examples_per_reason=3, **options)
        _print_result(f"clean --dry-run (first {args.dry_run_records} records of each file; "
                      "nothing written)", report)
        if (error := nothing_kept_error(report)) is not None:
            raise error
        return
    if not args.output:
        raise KorlmError("clean needs --output DIR (or --dry-run)")
    from korlm.clean.beam import run_clean

    stats = run_clean(inputs, args.output,
                      beam_options=(args.beam_option or conf.clean.beam_options) or None,
                      overwrite=_overwrite(args, conf), **options)
    _print_result(f"clean -> {args.output}", stats)


def cmd_vocab(args: argparse.Namespace) -> None:
    conf = _load(args, {"vocab.algorithm": args.algorithm,
                        "vocab.pre_tokenizer": args.pre_tokenizer,
                        "vocab.vocab_size": args.vocab_size,
                        "vocab.special_tokens": args.special_tokens})
    from korlm.tokenizer.vocab import build_vocab

    v = conf.vocab
    stats = build_vocab(args.corpus, args.output, algorithm=v.algorithm,
                        pre_tokenizer=v.pre_tokenizer, vocab_size=v.vocab_size,
                        min_frequency=v.min_frequency, max_sentences=v.max_sentences,
                        max_bytes=v.max_bytes, heldout_every=v.heldout_every, coverage=v.coverage,
                        special_tokens=v.special_tokens, overwrite=_overwrite(args, conf))
    _print_result(f"vocab -> {args.output}", stats)


def cmd_pretrain_data(args: argparse.Namespace) -> None:
    if args.inspect:
        from korlm.pretrain.dataset import inspect_examples

        print(inspect_examples(args.inspect, args.tokenizer, num_examples=args.examples,
                               **_load(args, {}).pretrain.model_dump()))
        return
    if not args.corpus or not args.output:
        raise KorlmError("pretrain-data needs --corpus DIR and --output DIR (or --inspect DATA_DIR)")
    conf = _load(args, {"pretrain_data.objective": args.objective,
                        "pretrain_data.max_seq_length": args.max_seq_length,
                        "pretrain_data.packing": args.packing,
                        "pretrain_data.nsp": args.nsp,
                        "pretrain_data.masking": args.masking,
                        "pretrain_data.dupe_factor": args.dupe_factor,
                        "pretrain_data.whole_word": args.whole_word})
    from korlm.pretrain_data.beam import run_pretrain_data

    p = conf.pretrain_data
    meta = run_pretrain_data(args.corpus, args.tokenizer, args.output,
                             **p.model_dump(exclude={"beam_options"}), beam_options=p.beam_options or None,
                             overwrite=_overwrite(args, conf))
    _print_result(f"pretrain-data -> {args.output}", meta)


def cmd_pretrain(args: argparse.Namespace) -> None:
    conf = _load(args, {"pretrain.model": args.model, "pretrain.size": args.size,
                        "pretrain.steps": args.steps,
                        "pretrain.checkpoint_every": args.checkpoint_every,
                        "pretrain.batch_size": args.batch_size,
                        "pretrain.grad_accum_steps": args.grad_accum_steps,
                        "pretrain.optimizer": args.optimizer,
                        "pretrain.strategy": args.strategy, "pretrain.tpu": args.tpu,
                        "pretrain.precision": args.precision,
                        "pretrain.keep_checkpoints": args.keep_checkpoints,
                        "pretrain.deterministic": args.deterministic,
                        "pretrain.dropout": args.dropout})
    from korlm.pretrain.train import run_pretrain

    checkpoints = run_pretrain(args.data, args.tokenizer, args.output, **conf.pretrain.model_dump(),
                               overwrite=_overwrite(args, conf))
    _print_result(f"pretrain -> {args.output}", checkpoints)


def cmd_evaluate(args: argparse.Namespace) -> None:
    conf = _load(args, {"evaluate.max_train_examples": args.max_train_examples,
                        "evaluate.max_eval_examples": args.max_eval_examples,
                        "evaluate.epochs": args.epochs,
                        "evaluate.batch_size": args.batch_size,
                        "evaluate.max_seq_length": args.max_seq_length,
                        "evaluate.data_dir": args.data_dir})
    from korlm.evaluation.evaluate import evaluate_runs

    try:
        seeds = conf.evaluate.seed_list if args.seeds is None else cfg.fine_tuning_seeds(0, args.seeds)
    except ValueError as exc:
        raise KorlmError(f"--seeds: {exc}".replace("evaluate.seeds: ", "")) from None
    # classical baselines come with the random-init twin (once per task, not per checkpoint)
    baselines = conf.evaluate.baselines if args.random_init and not args.no_baselines else []
    # No --tokenizer: the checkpoint's own (models.resolve_tokenizer).
    records = evaluate_runs(
        args.checkpoint, args.tokenizer, args.task, conf.evaluate.data_dir, args.output,
        random_init=args.random_init, overwrite=_overwrite(args, conf), seeds=seeds,
        baselines=baselines, **_fine_tune_params(args, conf))
    shown = [{k: v for k, v in r.items() if k != "predictions"} for r in records]
    _print_result(f"evaluate -> {args.output}", shown[0] if len(shown) == 1 else shown)


def _fine_tune_params(args: argparse.Namespace, conf) -> dict:
    """The evaluate section's fine-tuning settings for ``args.task`` (per_task applied),
    then the command-line flags, which beat both."""
    from korlm.evaluation.evaluate import settings_for_task

    params = settings_for_task(
        conf.evaluate.model_dump(exclude={"tasks", "data_dir", "parallelism", "seeds", "baselines"}),
        args.task)
    params["seed"] = conf.evaluate.seed_list[0]  # korlm finetune: the first of evaluate.seeds
    flags = {"max_train_examples": args.max_train_examples, "epochs": args.epochs,
             "max_eval_examples": args.max_eval_examples, "batch_size": args.batch_size,
             "max_seq_length": args.max_seq_length,
             "learning_rate": args.learning_rate, "pooling": args.pooling,
             "dropout": args.dropout}
    params.update({k: v for k, v in flags.items() if v is not None})
    if args.augment or args.num_aug is not None:
        # --augment/--num-aug over evaluate.augment (docs/augmentation.md)
        if not (args.augment or params.get("augment")):
            raise KorlmError("--num-aug needs --augment eda (or evaluate.augment in the config)")
        augment = dict(params.get("augment") or {})
        augment.update({k: v for k, v in (("method", args.augment), ("num_aug", args.num_aug))
                        if v is not None})
        try:
            params["augment"] = cfg.AugmentSettings(**augment).model_dump()
        except ValueError as exc:  # pydantic's ValidationError
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc), "loc": ()}
            raise KorlmError(f"--augment/--num-aug: {'.'.join(map(str, first['loc']))} "
                             f"{first['msg']}".replace("  ", " ")) from None
    return params


def _fine_tune_flags(p: argparse.ArgumentParser) -> None:
    """The fine-tuning flags korlm evaluate and korlm finetune share (they beat the
    evaluate section and its per_task entry)."""
    p.add_argument("--max-train-examples", type=int, metavar="N",
                   help="use at most N training examples (default evaluate.max_train_examples)")
    p.add_argument("--max-eval-examples", type=int, metavar="N", help="caps dev and test")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="maximum epochs (early stopping on dev keeps the best epoch)")
    p.add_argument("--batch-size", type=int, metavar="N", help="fine-tuning batch size")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="peak learning rate")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="tokens per example (longer ones are cut)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean", "pooler"],
                   help="sentence representation of the head (default evaluate.pooling, auto: "
                        "the pooler only when next-sentence prediction trained it)")
    p.add_argument("--dropout", type=float, metavar="P",
                   help="fine-tuning dropout (default evaluate.dropout, 0.1; not the checkpoint's)")
    p.add_argument("--augment", choices=["eda"],
                   help="add EDA-edited copies of the training examples (docs/augmentation.md)")
    p.add_argument("--num-aug", type=int, metavar="N", help="augmented copies per example (4)")


def cmd_finetune(args: argparse.Namespace) -> None:
    conf = _load(args, {"evaluate.data_dir": args.data_dir})
    from korlm.evaluation.finetune import finetune
    from korlm.modeling.checkpoints import resolve_checkpoint

    result = finetune(resolve_checkpoint(args.checkpoint), args.tokenizer, args.task, conf.evaluate.data_dir,
                      args.output, overwrite=_overwrite(args, conf), **_fine_tune_params(args, conf))
    _print_result(f"finetune -> {args.output} (serve it: korlm serve {args.output})",
                  result["metrics"])


def cmd_tune(args: argparse.Namespace) -> None:
    overrides = cfg.parse_set(args.set or [])
    overrides.update({"tune.task": args.task, "tune.n_trials": args.n_trials,
                      "tune.timeout_s": args.timeout, "tune.storage": args.storage,
                      "tune.study_name": args.study_name, "tune.sampler": args.sampler,
                      "tune.pruner": args.pruner, "evaluate.data_dir": args.data_dir})
    if args.pooling:  # (unset: --set evaluate.pooling=... or the config's)
        overrides["evaluate.pooling"] = args.pooling
    conf = _load(args, overrides)
    from korlm.evaluation.tune import run_tuning, summary_markdown
    from korlm.modeling.checkpoints import resolve_checkpoint

    checkpoint = args.checkpoint
    if not args.report_only:
        if not checkpoint:
            raise KorlmError("tune needs --checkpoint DIR (or --report-only)")
        checkpoint = resolve_checkpoint(checkpoint)
    # No --tokenizer: the checkpoint's own (models.resolve_tokenizer).
    summary = run_tuning(checkpoint, args.tokenizer, conf.evaluate.data_dir, args.output,
                         tune=conf.tune, evaluate_params=conf.evaluate.model_dump(),
                         worker_index=args.worker_index, report_only=args.report_only,
                         overwrite=_overwrite(args, conf))
    print(summary_markdown(summary))
    print(f"tune -> {args.output}")


def cmd_report(args: argparse.Namespace) -> None:
    from korlm.evaluation.report import build_report

    summary = build_report(args.results, args.output,
                           references=[] if args.no_references else None,
                           overwrite=_overwrite(args), style=args.style)
    print(summary["markdown"])
    print(f"report -> {args.output}")


def cmd_export(args: argparse.Namespace) -> None:
    conf = _load(args, {})
    import posixpath

    from korlm import storage
    from korlm.hub.export import export_checkpoint
    from korlm.modeling.checkpoints import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint, conf.export.checkpoint)
    # No --tokenizer: the checkpoint's own (models.resolve_tokenizer).
    results_md = storage.read_text(args.results) if args.results else None
    summary = export_checkpoint(checkpoint, args.tokenizer, args.output,
                                results_markdown=results_md, model_name=conf.export.model_name,
                                overwrite=_overwrite(args, conf),
                                # its folder: results.json (model-index) and the PNGs
                                report_dir=(posixpath.dirname(args.results) or ".") if args.results else None)
    _print_result(f"export -> {args.output}", summary)


def cmd_push(args: argparse.Namespace) -> None:
    conf = _load(args, {"push.repo_id": args.repo_id})
    from korlm.hub.push import push_model

    p = conf.push
    dry_run = p.dry_run if args.dry_run is None else args.dry_run
    plan = push_model(args.model, p.repo_id, args.output or args.model.rstrip("/") + "-push",
                      dry_run=dry_run, private=p.private, revision=p.revision, tag=p.tag_runs,
                      token_env=p.token_env, token_file=p.token_file, token_secret=p.token_secret,
                      retries=p.retries, run_id=args.run_id, config_hash=cfg.config_hash(conf),
                      overwrite=_overwrite(args, conf))
    _print_result("push" + (" (dry run)" if dry_run else ""), plan)


def cmd_pipeline(args: argparse.Namespace) -> None:
    if args.action == "run-step":
        if not args.step or not args.from_run:
            raise KorlmError("run-step needs a STEP and --from-run RUN_DIR (an earlier run's folder or URI)")
        from pipelines.run_step import run_step

        summary = run_step(args.step, args.from_run, overrides=cfg.parse_set(args.set or []),
                           config_file=args.config, run_id=args.run_id, compile_only=args.compile_only,
                           submit=args.target, dry_run=args.dry_run, wait=getattr(args, "wait", False))
        if args.compile_only:
            print(f"compiled one-step pipeline ({args.step}) -> {args.compile_only}")
        elif args.target:
            print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    conf = cfg.apply_overrides(cfg.load(args.config), cfg.parse_set(args.set or []))
    if args.action == "rehearse":
        if not args.step or not args.output:
            raise KorlmError("rehearse needs a STEP, --output DIR and its inputs as --input NAME=PATH")
        from pipelines.rehearse import rehearse_step

        inputs = dict(item.partition("=")[::2] for item in args.input or [])
        summary = rehearse_step(conf, args.step, inputs, args.output, devices=args.devices)
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    if args.action == "compile":
        from pipelines.compile import compile_pipeline

        path = compile_pipeline(conf, args.output or "build/korlm-pipeline.yaml", target=args.target or "kfp")
        print(f"compiled pipeline -> {path}")
    elif args.action == "run":
        from pipelines.local_run import run_local

        run_local(conf, config_path=args.config)
    elif args.action == "submit":  # --set of pipeline parameters: parameter values, not recompiled
        from pipelines.korlm_pipeline import run_settings

        conf, values = run_settings(cfg.load(args.config), cfg.parse_set(args.set or []))
        if args.target == "kfp":
            from pipelines.kfp_submit import submit as submit_kfp

            summary = submit_kfp(conf, host=args.host, dry_run=args.dry_run, wait=args.wait,
                                 parameter_values=values)
            print(json.dumps(summary, indent=2, ensure_ascii=False))
            return
        if args.target != "vertex":
            raise KorlmError("pipeline submit needs --target vertex or --target kfp")
        from pipelines.vertex import submit

        summary = submit(conf, dry_run=args.dry_run, parameter_values=values)
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        from pipelines.cost import format_table  # the estimate as a table; stdout stays JSON

        print(format_table(summary["cost_estimate"]), file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    conf = _load(args, {f"serve.{k}": getattr(args, k) for k in (
        "host", "port", "max_batch_size", "max_wait_ms", "max_items", "max_chars",
        "max_body_bytes")}).serve
    from korlm.serve.server import ServeSettings, serve

    serve(args.model_dir, host=conf.host, port=conf.port,
          settings=ServeSettings(**conf.model_dump(exclude={"host", "port"})),
          log_level="debug" if args.verbose else "warning" if args.quiet else "info")


# Subcommands that write an artifact folder (--output): they take --overwrite.
OUTPUT_STEPS = ("clean", "vocab", "pretrain-data", "pretrain", "evaluate", "finetune", "tune",
                "report", "export", "push")

# --tokenizer of the commands that read a checkpoint (models.resolve_tokenizer).
TOKENIZER_OVERRIDE_HELP = ("default: the tokenizer the checkpoint carries; a DIR given overrides "
                           "it and is refused unless its vocab hash is the checkpoint's (needed "
                           "only for checkpoints written before they carried one)")


# The end of each subcommand's --help: commands that run from the repository root on its
# own sample data (data/sample, configs/), each step on the one before's output.
EXAMPLES = {
    "clean": """\
  korlm clean --input data/sample/raw/movie_reviews.tsv --field review --dry-run
  korlm clean --input data/sample/raw/movie_reviews.tsv --field review --output runs/ex/clean""",
    "vocab": "  korlm vocab --corpus runs/ex/clean --output runs/ex/vocab --vocab-size 2000",
    "pretrain-data": """\
  korlm pretrain-data --corpus runs/ex/clean --tokenizer runs/ex/vocab --output runs/ex/data \\
      --max-seq-length 64
  korlm pretrain-data --inspect runs/ex/data --tokenizer runs/ex/vocab --examples 1""",
    "pretrain": """\
  korlm pretrain --data runs/ex/data --tokenizer runs/ex/vocab --output runs/ex/pretrain \\
      --model bert --size tiny --steps 200 --checkpoint-every 100""",
    "evaluate": """\
  korlm evaluate --checkpoint runs/ex/pretrain/checkpoints/step-000200 --task nsmc \\
      --data-dir data/sample/eval --output runs/ex/eval/step-200/nsmc --epochs 1""",
    "finetune": """\
  korlm finetune --checkpoint runs/ex/pretrain --task nsmc --data-dir data/sample/eval \\
      --output runs/ex/nsmc-model""",
    "tune": """\
  korlm tune --config configs/tiny.yaml --checkpoint runs/ex/pretrain --task nsmc \\
      --data-dir data/sample/eval --output runs/ex/tune --n-trials 4""",
    "report": "  korlm report --results runs/ex/eval --output runs/ex/report",
    "export": """\
  korlm export --checkpoint runs/ex/pretrain --output runs/ex/hf \\
      --results runs/ex/report/results.md""",
    "push": """\
  korlm push --model runs/ex/hf --repo-id my-org/korlm-tiny            # writes the plan only
  HF_TOKEN=... korlm push --model runs/ex/hf --repo-id my-org/korlm-tiny --no-dry-run""",
    "serve": """\
  korlm serve runs/ex/nsmc-model --port 8080
  curl -s localhost:8080/v1/classify -H 'content-type: application/json' \\
      -d '{"items": [{"text": "정말 재미있어요"}]}'""",
    "pipeline": """\
  korlm pipeline compile --config configs/tiny.yaml --output build/korlm-pipeline.yaml
  korlm pipeline run --config configs/tiny.yaml
  korlm pipeline submit --target vertex --config configs/vertex-small-gpu.yaml --dry-run""",
}

VERBOSITY_HELP = ("-v/--verbose and -q/--quiet go before or after the command: "
                  "`korlm -q clean ...` = `korlm clean -q ...`")


def _verbosity_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """-v/-q on the main parser (default False) and on every subcommand (default
    SUPPRESS, so that a flag given before the command is not reset after it)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug lines of korlm, info lines of the libraries and TensorFlow's "
                        "native start-up messages")
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="warnings and errors only (no korlm info lines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="korlm",
        description="Raw Korean text -> cleaned corpus -> vocab -> pretraining data -> "
                    "pretrained checkpoints -> evaluation report -> Hugging Face export.",
        epilog=f"`korlm COMMAND --help` shows each command's flags and examples. {VERBOSITY_HELP}.")
    _verbosity_flags(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"Examples:\n{EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _verbosity_flags(p, argparse.SUPPRESS)
        p.add_argument("--config", metavar="FILE",
                       help="YAML run config (see configs/); flags override it")
        p.set_defaults(func=func)
        if name in OUTPUT_STEPS:
            p.add_argument("--overwrite", action="store_true",
                           help="replace an earlier korlm " + name + " output at --output (config "
                                "run.overwrite); a path holding anything korlm did not write is "
                                "always refused and left as it is")
        return p

    p = add("clean", cmd_clean, "Clean raw corpora with Apache Beam into one sentence per line.")
    p.add_argument("--input", nargs="+", metavar="INPUT",
                   help="raw files, globs or gs:// URIs (.txt/.jsonl/.csv/.tsv/.xml, .json = Modu corpus; "
                        ".gz/.bz2), or one input in the config's terms as a YAML mapping, e.g. "
                        "'{path: data/a.tsv, field: review}'; default: clean.inputs of --config")
    p.add_argument("--format", metavar="FORMAT",
                   help="format of the --input paths: txt, paragraphs (documents between blank lines), "
                        "jsonl, csv, tsv, xml or modu (default: from each file name)")
    p.add_argument("--field", metavar="NAME",
                   help="where the text is in the --input paths: JSON key, CSV/TSV column, XML element "
                        "path or Modu unit list (default: text; e.g. --field review for "
                        "data/sample/raw/movie_reviews.tsv)")
    p.add_argument("--output", metavar="DIR", help="corpus directory to write (required unless --dry-run)")
    p.add_argument("--beam-option", action="append", metavar="ARG",
                   help="Beam pipeline argument, repeatable (e.g. --beam-option=--runner=DataflowRunner)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every filter on the first records of each input in one process and "
                        "print what each would drop (counts and examples); write nothing")
    p.add_argument("--dry-run-records", type=int, default=1000, metavar="N",
                   help="records read per input file by --dry-run (default 1000)")

    p = add("vocab", cmd_vocab, "Train a subword vocabulary on a cleaned corpus.")
    p.add_argument("--corpus", required=True, metavar="DIR", help="output of `korlm clean`")
    p.add_argument("--output", required=True, metavar="DIR", help="tokenizer directory to write")
    p.add_argument("--algorithm", choices=["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe"],
                   help="subword algorithm (default wordpiece)")
    p.add_argument("--pre-tokenizer", choices=["none", "morpheme"],
                   help="`morpheme` splits eojeol into Kiwi morphemes before subword training")
    p.add_argument("--vocab-size", type=int, metavar="N", help="tokens in the vocabulary (default 8000)")
    p.add_argument("--special-tokens", choices=["bert", "bart"],
                   help="special tokens at ids 0-4: bert = [PAD] [UNK] [CLS] [SEP] [MASK] (default); "
                        "bart = <s> <pad> </s> <unk> <mask> (BART/RoBERTa)")

    p = add("pretrain-data", cmd_pretrain_data, "Tokenize and pack the corpus into TFRecord shards.")
    p.add_argument("--corpus", metavar="DIR", help="output of `korlm clean` (required unless --inspect)")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="output of `korlm vocab`")
    p.add_argument("--output", metavar="DIR", help="examples directory to write (required unless --inspect)")
    p.add_argument("--inspect", metavar="DATA_DIR",
                   help="instead of packing: decode a few examples of DATA_DIR with the masks/noise "
                        "training applies (the pretrain section of --config) and their labels")
    p.add_argument("--examples", type=int, default=3, metavar="N", help="--inspect: examples shown (default 3)")
    p.add_argument("--objective", choices=["mlm", "bart"],
                   help="mlm: masked LM (BERT/RoBERTa); bart: denoising (default mlm)")
    p.add_argument("--max-seq-length", type=int, metavar="N", help="tokens per example (default 128)")
    p.add_argument("--packing", choices=["full-sentences", "doc-sentences", "segment-pair", "span"],
                   help="default: full-sentences for mlm, span for bart (docs/pretrain_data.md)")
    p.add_argument("--nsp", action="store_true", default=None,
                   help="next-sentence labels, 50%% random B (segment-pair packing)")
    p.add_argument("--masking", choices=["dynamic", "static"],
                   help="static: mask once here, BERT create_pretraining_data style")
    p.add_argument("--dupe-factor", type=int, metavar="N", help="static masking: copies with different masks")
    p.add_argument("--whole-word", choices=["none", "eojeol", "morpheme"], help="static masking unit")

    p = add("pretrain", cmd_pretrain, "Pretrain a model from scratch, checkpointing every K steps.")
    p.add_argument("--data", required=True, metavar="DIR", help="output of `korlm pretrain-data`")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="output of `korlm vocab`")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="run directory (checkpoints/, checkpoints.json, train_log.jsonl); "
                        "re-running resumes from its latest checkpoint")
    p.add_argument("--model", choices=["bert", "roberta", "bart", "electra"],
                   help="architecture (default bert; electra: generator + discriminator)")
    p.add_argument("--size", choices=["tiny", "mini", "small", "base", "large"],
                   help="model size preset (default tiny)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer updates in all (default 300)")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="write a checkpoint every K steps (default 100)")
    p.add_argument("--batch-size", type=int, metavar="N", help="global batch per update")
    p.add_argument("--grad-accum-steps", type=int, metavar="N",
                   help="micro-batches per update (--batch-size must divide by it)")
    p.add_argument("--optimizer", choices=["adamw", "lamb"],
                   help="default adamw; lamb for large batches")
    p.add_argument("--strategy", choices=["auto", "cpu", "gpu", "tpu", "jax-data-parallel"],
                   help="auto: a TPU when one is configured, several GPUs mirrored, else one "
                        "device; jax-data-parallel needs KERAS_BACKEND=jax")
    p.add_argument("--tpu", metavar="NAME", help="TPU name or grpc:// address")
    p.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                   help="auto: mixed_bfloat16 on TPU, mixed_float16 on GPUs that gain from it, "
                        "else float32")
    p.add_argument("--keep-checkpoints", type=int, metavar="K",
                   help="keep the last K checkpoints (and pretrain.keep_checkpoint_every ones)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="a killed and resumed run ends with the same weights as an "
                        "uninterrupted one (slower input pipeline)")
    p.add_argument("--dropout", type=float, metavar="P",
                   help="backbone dropout while pretraining (default pretrain.dropout, 0)")

    p = add("evaluate", cmd_evaluate, "Fine-tune one checkpoint on a task and score it.")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint directory (run/checkpoints/step-NNNNNN)")
    p.add_argument("--task", required=True, metavar="NAME|FILE.yaml",
                   help="a built-in task (nsmc, klue-nli, klue-sts, korsts, kornli, "
                        "question-pair, hate-speech, hate-speech-bias, chatbot, korquad, "
                        "klue-ner) or a task YAML file (see docs/evaluate.md)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="where metrics.json and the predictions go")
    p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_OVERRIDE_HELP)
    p.add_argument("--data-dir", metavar="DIR",
                   help="holds the built-in tasks' folders (nsmc/, klue/, korsts/, ...), "
                        "e.g. the shared data kit")
    _fine_tune_flags(p)
    p.add_argument("--random-init", action="store_true",
                   help="baseline: same architecture, weights not loaded; also computes "
                        "evaluate.baselines (bag-of-words) into <output>/bag-of-words/")
    p.add_argument("--no-baselines", action="store_true",
                   help="with --random-init: leave out the classical baselines")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="fine-tuning seeds (default evaluate.seeds); several write "
                        "<output>/seed-<S>/metrics.json")

    p = add("finetune", cmd_finetune,
            "Fine-tune a checkpoint on one task and keep the model for serving.")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint directory, a pretraining run (its last checkpoint) or a "
                        "korlm Hugging Face export")
    p.add_argument("--task", required=True, metavar="NAME|FILE.yaml",
                   help="a built-in task or a task YAML file (as korlm evaluate)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="the servable model directory (weights, tokenizer, head, labels, metrics)")
    p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_OVERRIDE_HELP)
    p.add_argument("--data-dir", metavar="DIR", help="holds the tasks' folders")
    _fine_tune_flags(p)

    p = add("tune", cmd_tune, "Search fine-tuning hyperparameters with Optuna (docs/tuning.md).")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="a checkpoint directory, a pretraining run (its last checkpoint) or a "
                        "korlm Hugging Face export (required unless --report-only)")
    p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_OVERRIDE_HELP)
    p.add_argument("--task", metavar="NAME|FILE.yaml", help="the task to tune on (default tune.task)")
    p.add_argument("--data-dir", metavar="DIR", help="holds the tasks' folders (default evaluate.data_dir)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="study.json, best_params.yaml, importance.md, summary.md and plots")
    p.add_argument("--n-trials", type=int, metavar="N", help="trials this worker runs")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no trial after this long")
    p.add_argument("--sampler", choices=["tpe", "random"], help="Optuna sampler (default tune.sampler)")
    p.add_argument("--pruner", choices=["median", "threshold", "none"],
                   help="stops unpromising trials after an epoch (default tune.pruner)")
    p.add_argument("--storage", metavar="URL",
                   help="shared Optuna storage for parallel workers: sqlite:///study.db, "
                        "postgresql://..., or journal:///path/study.log (default: in memory)")
    p.add_argument("--study-name", metavar="NAME", help="workers with the same storage and name "
                                                        "share one study")
    p.add_argument("--worker-index", type=int, default=0, metavar="K",
                   help="this worker's number among parallel workers (offsets the sampler seed)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean", "pooler"],
                   help="sentence representation of every trial's head (default evaluate.pooling)")
    p.add_argument("--report-only", action="store_true",
                   help="run no trial: write the summary of the study in --storage as it stands")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config value, repeatable (e.g. tune.n_trials=10)")

    p = add("report", cmd_report, "Collect evaluation results into tables and plots.")
    p.add_argument("--results", nargs="+", required=True, metavar="DIR",
                   help="evaluate output directories (each with metrics.json, or parents of them)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="where results.md, results.html, results.json and the plots go")
    p.add_argument("--no-references", action="store_true",
                   help="leave out the published reference rows (marked external)")
    p.add_argument("--style", choices=["default", "paper"], default="default",
                   help="paper: percent with two decimals, columns in the KoELECTRA/KLUE "
                        "table order (NSMC, Naver NER, PAWS, KorNLI, KorSTS, ...)")

    p = add("export", cmd_export, "Export a checkpoint to a Hugging Face model directory.")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint directory, or a run directory (its last checkpoint)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="the Hugging Face model directory to write (weights, config, tokenizer, card)")
    p.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_OVERRIDE_HELP)
    p.add_argument("--results", metavar="FILE", help="results.md from `korlm report`, for the card (results.json beside it "
                        "gives the card's model-index; its PNGs are copied to report/)")

    p = add("push", cmd_push, "Upload an exported model to the Hugging Face Hub (dry run by default).")
    p.add_argument("--model", required=True, metavar="DIR", help="output of `korlm export`")
    p.add_argument("--repo-id", metavar="ID", help="namespace/name")
    p.add_argument("--output", metavar="DIR", help="where push_plan.json goes (default MODEL-push)")
    p.add_argument("--run-id", metavar="ID", help="named in the commit message and tagged run-ID")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dry-run", dest="dry_run", action="store_true", default=None,
                   help="write the upload plan only (default unless push.dry_run: false)")
    g.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                   help="really upload; the token comes from $HF_TOKEN (push.token_env), "
                        "push.token_file or push.token_secret")

    p = add("serve", cmd_serve, "Serve a fine-tuned model directory over HTTP (FastAPI).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="output of `korlm finetune`")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, metavar="N", help="default 8080")
    p.add_argument("--max-batch-size", type=int, metavar="N",
                   help="items of concurrent requests gathered into one model call (default 32; "
                        "1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, metavar="MS",
                   help="how long a batch waits for more items after its first (default 0: it "
                        "takes what queued while the previous model call ran)")
    p.add_argument("--max-items", type=int, metavar="N",
                   help="items per request; more answer 422 (default 64)")
    p.add_argument("--max-chars", type=int, metavar="N",
                   help="characters per text; longer answer 422 (default 2000)")
    p.add_argument("--max-body-bytes", type=int, metavar="N",
                   help="request body size cap in bytes; a larger body answers 413, read no "
                        "further than the cap (default 1048576)")

    p = add("pipeline", cmd_pipeline, "Compile, run locally (kfp.local) or submit the KFP pipeline.")
    p.add_argument("action", choices=["compile", "run", "submit", "run-step", "rehearse"],
                   help="compile: write the pipeline YAML; run: run it here with kfp.local; "
                        "submit: send it to Vertex AI or a KFP cluster; run-step: re-run one step "
                        "of an earlier run; rehearse: run a Vertex CustomJob step here")
    p.add_argument("step", nargs="?", choices=["clean", "vocab", "pretrain-data", "pretrain", "evaluate",
                                               "tune", "finetune", "export", "push"],
                   help="run-step: the step to re-run from an earlier run's artifacts; rehearse: the "
                        "Vertex CustomJob step to run here")
    p.add_argument("--from-run", metavar="RUN_DIR", help="run-step: the earlier run (runs/<id> or its URI)")
    p.add_argument("--run-id", metavar="ID", help="run-step: id of the new run (default: a timestamp)")
    p.add_argument("--compile-only", metavar="FILE",
                   help="run-step: write the one-step pipeline for a cluster instead of running it here")
    p.add_argument("--output", metavar="PATH",
                   help="compile: where the pipeline YAML goes (default build/korlm-pipeline.yaml); "
                        "rehearse: the folder for the job's outputs")
    p.add_argument("--input", action="append", metavar="NAME=PATH",
                   help="rehearse: a local folder for one of the step's input artifacts, repeatable "
                        "(pretrain: examples=DIR, tokenizer=DIR)")
    p.add_argument("--devices", type=int, metavar="N",
                   help="rehearse: virtual CPU devices for JAX (default: the job's accelerator_count)")
    p.add_argument("--target", choices=["vertex", "kfp"],
                   help="compile: how tasks are placed (default kfp); submit: where to")
    p.add_argument("--dry-run", action="store_true",
                   help="submit: build and print the job request and per-task resources; send nothing")
    p.add_argument("--host", metavar="URL",
                   help="submit --target kfp: the KFP API address (default kfp.host, http://localhost:8080)")
    p.add_argument("--wait", action="store_true",
                   help="submit --target kfp: follow the run to its end and print where the report is")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config value, repeatable")
    return parser


def main(argv: list[str] | None = None) -> int:
    from korlm import logs

    args = build_parser().parse_args(argv)
    verbosity = 1 if args.verbose else -1 if args.quiet else 0
    logs.setup(verbosity)
    if argv is None and verbosity <= 0:
        logs.filter_native_stderr()  # the command line's own process only, not a caller's
    try:
        args.func(args)
    except KorlmError as exc:
        print(f"korlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path the operating system refused (no permission, read-only, full disk):
        # what and where in one line, not a traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"korlm {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
