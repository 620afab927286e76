#!/bin/sh
# The CIFAR-10 runs at this machine's size (README, "CIFAR-10 at CPU size"), one after another, one torch
# thread each. Usage: [PYTHON=...] sh analysis/cifar10_cpu.sh DATA_ROOT [NAME ...]  (NAME: cifar10-cpu-NAME.json)
#   DATA_ROOT holds cifar-10-batches-py/ (the official python layout). Rerunning resumes unfinished runs and
#   skips finished ones (their folders refuse to be overwritten). Each run's wall time goes to its log line.
set -u
root=${1:?usage: sh analysis/cifar10_cpu.sh DATA_ROOT [name ...]}; shift
[ $# -gt 0 ] || set -- dnn-dgn-dlgn-c4gap dnn-dgn-dlgn-resnet20 regimes regimes-30ep kernels-vs-network
for name in "$@"; do
  for experiment in dnn-dgn-dlgn regimes kernels-vs-network gate-copy shuffle-and-ones ""; do
    case $name in "$experiment"*) break;; esac
  done
  [ -n "$experiment" ] || { echo "$name: no experiment of that name; see analysis/configs/cifar10-cpu-*.json"; exit 2; }
  out=runs/cifar10-cpu-$name
  if [ -f "$out/results.json" ] && grep -q '"finished": true' "$out/results.json"; then
    echo "$(date -u +%FT%TZ) $name: finished already ($out)"; continue
  fi
  start=$(date +%s)
  echo "$(date -u +%FT%TZ) $name: start"
  ${PYTHON:-python} -m npk.cli run "$experiment" --config "analysis/configs/cifar10-cpu-$name.json" --data-root "$root" --out "$out" \
    --threads 1 --no-progress
  status=$?   # before any $(...) below replaces it
  echo "$(date -u +%FT%TZ) $name: exit $status after $(( $(date +%s) - start )) s"
done
