#!/bin/sh
# The CIFAR-10 evidence runs (README, "CIFAR-10"): one resumable run per seed, one torch thread each.
# Usage: [PYTHON=...] [SEEDS="0 1 2"] [RUNS=runs] [COMMIT=1] sh analysis/cifar10_seeds.sh DATA_ROOT CONFIG ...
#   DATA_ROOT holds cifar-10-batches-py/ (the official python layout); CONFIG names
#   analysis/configs/cifar10-CONFIG.json (dnn-dgn-dlgn, regimes). Each seed runs in RUNS/cifar10/CONFIG/seed-K;
#   rerunning resumes an unfinished seed from its last epoch and skips finished ones. A finished seed's
#   results.json, report.md and figures are copied to results/cifar10/CONFIG/seed-K/ and, with COMMIT=1,
#   committed at once (only those files), so a stop loses at most the seed in progress.
set -u
root=${1:?usage: sh analysis/cifar10_seeds.sh DATA_ROOT CONFIG ...}; shift
[ $# -gt 0 ] || { echo "name at least one config: dnn-dgn-dlgn, regimes"; exit 2; }
for config in "$@"; do
  file=analysis/configs/cifar10-$config.json
  [ -f "$file" ] || { echo "$config: no file $file"; exit 2; }
  experiment=${config%%-cpu*}
  for seed in ${SEEDS:-0 1 2}; do
    out=${RUNS:-runs}/cifar10/$config/seed-$seed
    keep=results/cifar10/$config/seed-$seed
    if [ -f "$keep/results.json" ]; then
      echo "$(date -u +%FT%TZ) $config seed $seed: finished already ($keep)"; continue
    fi
    start=$(date +%s)
    echo "$(date -u +%FT%TZ) $config seed $seed: start"
    ${PYTHON:-python} -m npk.cli run "$experiment" --config "$file" --set seed="$seed" --set n_seeds=1 \
      --data-root "$root" --out "$out" --threads 1 --no-progress
    status=$?
    echo "$(date -u +%FT%TZ) $config seed $seed: exit $status after $(( $(date +%s) - start )) s"
    [ "$status" -eq 0 ] || continue
    mkdir -p "$keep/figures"
    cp "$out/results.json" "$out/report.md" "$keep/" && cp "$out"/figures/*.png "$keep/figures/" 2>/dev/null
    if [ "${COMMIT:-0}" = 1 ]; then
      flock .git/npk-results.lock sh -c "git add '$keep' && git commit -q -m 'results: CIFAR-10 $config seed $seed' -- '$keep'" \
        && echo "$(date -u +%FT%TZ) $config seed $seed: committed $keep"
    fi
  done
done
