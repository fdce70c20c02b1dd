#!/usr/bin/env bash
# Audit the built-in zoo (every built-in model, bare and with each built-in defense) into one
# results database, then build the leaderboard (HTML and Markdown). A few minutes on 2 CPU cores.
set -euo pipefail
out="${1:-leaderboard-out}"
for model in digits-mlp digits-cnn; do
    robustcheck audit --model "$model" --probe fgsm --probe pgd-linf --probe deepfool \
        --samples 100 --seed 0 --out "$out/$model" --results-db "$out/results.db" --quiet
done
robustcheck leaderboard "$out/results.db" --out "$out/leaderboard.html"
robustcheck leaderboard "$out/results.db" --markdown --out "$out/leaderboard.md"
