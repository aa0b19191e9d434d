#!/usr/bin/env bash
# The main job: train STD, CSG, ICNN, PICNN and CSG+ on Fashion-MNIST with the same seed and epochs,
# measure them, analyse them, write a report per run and one comparison page.
# Five trainings of 8-12 minutes each on one core (measured, see README). Environment knobs: RUNS (output folder), EPOCHS, SUBSET,
# SEED, METHODS. The test split is scored every 4th epoch during training (for the curves) and fully at the end.
set -euo pipefail
RUNS=${RUNS:-runs/fashion-mnist}
EPOCHS=${EPOCHS:-12}
SUBSET=${SUBSET:-20000}
SEED=${SEED:-0}
METHODS=${METHODS:-"std csg icnn picnn csg-plus"}
mkdir -p "$RUNS"
for m in $METHODS; do
  run="$RUNS/$m-seed$SEED"
  if [ -f "$run/checkpoint.safetensors" ] && [ ! -f "$run/metrics.json" ]; then
    csg train --resume --method "$m" --epochs "$EPOCHS" --subset "$SUBSET" --seed "$SEED" --eval-every 4 --out "$run"
  elif [ ! -f "$run/metrics.json" ]; then
    csg train --method "$m" --epochs "$EPOCHS" --subset "$SUBSET" --seed "$SEED" --eval-every 4 --out "$run"
  fi
  csg analyze "$run"
  csg report "$run"
done
# every finished run in RUNS, so that SEED=1 bash scripts/main.sh adds seeds to the same table
finished=()
for d in "$RUNS"/*-seed*; do [ -f "$d/metrics.json" ] && finished+=("$d"); done
csg compare "${finished[@]}" --out "$RUNS/compare"
echo "comparison page: $RUNS/compare/index.html"
