#!/usr/bin/env bash
# The --lam auto runs of docs/lambda-controller.md, "The budget in every run": short runs, a large
# batch, 90 % of the channels, 5 % of the FLOPs under a cosine schedule (issue 24).
# usage: bash benchmarks/budget_cases.sh OUTDIR [a b c d e f]   (one after another: 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
O=$1; shift
N=${NCSLIM:-.venv/bin/ncslim}
C="--finetune-epochs 1 --finetune-lr 0.01"
for x in "$@"; do case $x in
a) $N run --penalty tl1 --lam auto --ratio 0.6 --epochs 4 --limit-train 4000 $C --out "$O/a" > "$O/a.log" 2>&1;;
b) $N run --penalty l1 --mode proximal --lam auto --target-flops 0.4 --epochs 4 --limit-train 4000 $C --out "$O/b" > "$O/b.log" 2>&1;;
c) $N run --penalty l1 --mode proximal --lam auto --ratio 0.5 --epochs 6 --batch-size 512 --lr 0.2 $C --out "$O/c" > "$O/c.log" 2>&1;;
d) $N run --penalty l1 --mode proximal --lam auto --ratio 0.9 --epochs 6 $C --out "$O/d" > "$O/d.log" 2>&1;;
e) $N run --penalty scad --mode subgradient --lam auto --ratio 0.85 --epochs 3 --limit-train 5000 $C --out "$O/e" > "$O/e.log" 2>&1;;
f) $N run --penalty l1 --mode proximal --lam auto --target-flops 0.05 --epochs 3 --limit-train 5000 --schedule cosine $C --out "$O/f" > "$O/f.log" 2>&1;;
esac; done
