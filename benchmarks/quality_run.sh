#!/usr/bin/env bash
# Issue 21's quality run: BERT (MLM) and ELECTRA pretrained side by side for the same
# wall-clock time on the same corpus, vocab and packed data, then fine-tuned on NSMC and
# KLUE-NLI with 5 seeds beside random init and the bag-of-words row.
#
#   benchmarks/quality_run.sh prepare            # clean, vocab, pretrain-data
#   benchmarks/quality_run.sh probe [SECONDS]    # both models at once, one core each: steps/s
#   benchmarks/quality_run.sh pretrain BERT_STEPS ELECTRA_STEPS
#   benchmarks/quality_run.sh evaluate [FAMILY]  # every task x seed x arm, then the report
#                                                  (FAMILY: bert or electra; default both)
#
# Run from the repository root with ../shared beside it (the shared data kit). The two
# pretraining runs go at the same time, each pinned to one core (taskset), so that they
# see the same machine and load: "one CPU hour each" is one core for 60 minutes each.
# Steps per model come from the probe: steps = minutes x 60 x steps/s.
set -euo pipefail
CONFIG=${CONFIG:-configs/quality-cpu-hour.yaml}
OUT=${OUT:-runs/quality}
KORLM=${KORLM:-.venv/bin/korlm}
PY=${PY:-.venv/bin/python}

# OUT is this script's: it writes bert.yaml, electra.yaml, reviews300k.tsv and the steps'
# folders there. A folder it did not make (no marker) that holds anything is refused.
claim_out() {
  if [ -e "$OUT" ] && [ ! -e "$OUT/.korlm-quality-run" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo file)" ]; then
    echo "quality_run.sh: $OUT holds files this script did not write; set OUT to a new folder" >&2
    exit 2
  fi
  mkdir -p "$OUT" && touch "$OUT/.korlm-quality-run"
}
case "${1:-}" in prepare|probe|pretrain|evaluate) claim_out ;; esac

load() { cut -d' ' -f1-3 /proc/loadavg; }

# A copy of the config with pretrain.{model,steps,warmup_steps,checkpoint_every} set.
model_config() {  # MODEL STEPS -> prints the path
  "$PY" - "$CONFIG" "$OUT/$1.yaml" "$1" "$2" <<'EOF'
import sys, yaml
src, dst, model, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = yaml.safe_load(open(src))
cfg["pretrain"].update(model=model, steps=steps, warmup_steps=max(1, steps // 50),
                       checkpoint_every=max(1, steps // 6))
yaml.safe_dump(cfg, open(dst, "w"), allow_unicode=True, sort_keys=False)
print(dst)
EOF
}

PIDS=()
pretrain_pair() {  # BERT_STEPS ELECTRA_STEPS SUFFIX; their process ids in PIDS
  local core=0
  for pair in "bert $1" "electra $2"; do
    set -- $pair "$3"
    local cfg; cfg=$(model_config "$1" "$2")
    echo "$(date -u +%T) pretrain $1 $2 steps on core $core (load $(load))"
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 taskset -c $core \
      "$KORLM" pretrain --config "$cfg" --data "$OUT/data" --tokenizer "$OUT/vocab" \
      --output "$OUT/pretrain-$1$3" --overwrite > "$OUT/pretrain-$1$3.log" 2>&1 &
    PIDS+=($!); core=$((core + 1))
  done
}

case "${1:-}" in
  prepare)
    [ -s "$OUT/reviews300k.tsv" ] || zcat ../shared/data/nsmc/nsmc_extra_reviews_not_in_nsmc.tsv.gz \
      | head -300001 > "$OUT/reviews300k.tsv"
    "$KORLM" clean --config "$CONFIG" --output "$OUT/clean" --overwrite
    "$KORLM" vocab --config "$CONFIG" --corpus "$OUT/clean" --output "$OUT/vocab" --overwrite
    "$KORLM" pretrain-data --config "$CONFIG" --corpus "$OUT/clean" --tokenizer "$OUT/vocab" \
      --output "$OUT/data" --overwrite
    ;;
  probe)
    secs=${2:-180}
    pretrain_pair 100000 100000 -probe
    sleep "$secs"; kill "${PIDS[@]}"; wait || true
    for m in bert electra; do
      "$PY" - "$OUT/pretrain-$m-probe/train_log.jsonl" "$m" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rates = sorted(r["steps_per_second"] for r in rows[len(rows) // 3:] if "steps_per_second" in r)
print(f"{sys.argv[2]}: median {rates[len(rates) // 2]:.3f} steps/s over {len(rates)} windows "
      f"(the first third of the log skipped: compile and warm-up), last step {rows[-1].get('step')}")
EOF
    done
    ;;
  pretrain)
    pretrain_pair "$2" "$3" ""
    for p in "${PIDS[@]}"; do wait "$p"; done
    echo "$(date -u +%T) pretraining done (load $(load))"
    ;;
  evaluate)
    # One report per family: each pairs its checkpoint with random init of its own
    # architecture (the report has one random-init row); bag-of-words is in both.
    for m in ${2:-bert electra}; do
      last=$(ls -d "$OUT/pretrain-$m/checkpoints/step-"* | sort | tail -1)
      for t in nsmc klue-nli; do
        echo "$(date -u +%T) $m $(basename "$last") $t (load $(load))"
        "$KORLM" evaluate --config "$CONFIG" --checkpoint "$last" --task "$t" \
          --output "$OUT/eval-$m/$(basename "$last")/$t" --overwrite
        echo "$(date -u +%T) $m random init $t (load $(load))"
        "$KORLM" evaluate --config "$CONFIG" --checkpoint "$last" --task "$t" --random-init \
          --output "$OUT/eval-$m/random-init/$t" --overwrite
      done
      "$KORLM" report --results "$OUT/eval-$m"/* --output "$OUT/report-$m" --overwrite
    done
    echo "$(date -u +%T) evaluation done (load $(load))"
    ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
