#!/usr/bin/env bash
# Start, or continue, the registered evidence-v3 table (docs/evidence.md, "Status and cost") on a 2-core machine.
#
#   bench/evidence_v3_resume.sh [CLONE_DIR]      (default: ../ross-evidence-v3 next to this checkout)
#
# The table takes several sessions of a machine, so this script is made to be run again after a machine is lost:
# - a clone of this repository held at the table's commit (every run records its commit and the report refuses to mix
#   commits, while main moves on), with its own .venv (`make venv`);
# - the runs already committed in bench/results/evidence_v3/runs/ copied into the clone, where the harness's
#   `run_one` reuses them (it never runs a finished (arm, seed) twice); a run cut off with its machine starts over;
# - two workers, each pinned to one core with one thread, calling `run_one` for every arm of its seeds
#   (0, 1, 2, 3 and 7, 6, 5, 4: each worker text-pretrains the LLM of its own seeds);
# - a loop that copies each finished run (result.json + compressed predictions) into this checkout and commits that
#   folder alone, so that a finished run survives the machine.
# Pause the workers while timing anything on the machine: kill -STOP / -CONT -- -<pgid> (pgids in CLONE/runs/*.pgid).
set -euo pipefail

COMMIT=c78a33b  # the commit of the table's first run (2026-12-08); the table must finish at it
HERE=$(cd "$(dirname "$0")/.." && pwd)
CLONE=$(realpath -m "${1:-$HERE/../ross-evidence-v3}")
OUT=$CLONE/runs/evidence_v3
STORED=$HERE/bench/results/evidence_v3/runs

for pid_file in "$CLONE"/runs/*.pgid; do
  if [ -f "$pid_file" ] && kill -0 -- "-$(cat "$pid_file")" 2>/dev/null; then
    echo "evidence_v3_resume: $(basename "$pid_file" .pgid) is still running (pgid $(cat "$pid_file")); nothing started" >&2
    exit 1
  fi
done

if [ ! -d "$CLONE/.git" ]; then
  git clone -q "$HERE" "$CLONE"
fi
git -C "$CLONE" checkout -q "$COMMIT"
if [ -n "$(git -C "$CLONE" status --porcelain --untracked-files=no)" ]; then
  echo "evidence_v3_resume: $CLONE has changes to tracked files; a run must record a clean $COMMIT" >&2
  exit 1
fi
mkdir -p "$OUT/runs"
make -C "$CLONE" venv >"$CLONE/runs/venv-install.log" 2>&1 || { echo "make venv failed: $CLONE/runs/venv-install.log" >&2; exit 1; }
for result in "$STORED"/*/result.json; do
  [ -f "$result" ] || continue
  run=$(basename "$(dirname "$result")")
  mkdir -p "$OUT/runs/$run" && cp "$result" "$OUT/runs/$run/result.json"
done
echo "evidence_v3_resume: $(ls "$OUT/runs" | wc -l) of 24 runs finished earlier; clone $CLONE at $COMMIT"

worker() {  # worker NAME CORE SEED...
  local name=$1 core=$2
  shift 2
  # `cd` apart, so that `$!` is setsid's own pid: setsid execs python in place, which leads its process group.
  (cd "$CLONE"; OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false setsid taskset -c "$core" .venv/bin/python -c '
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, "bench")
import evidence_v3 as ev
protocol = ev.load_protocol(ev.PROTOCOL, "full")
for seed in map(int, sys.argv[2:]):
    for arm in protocol["arms"]:
        ev.run_one(arm, seed, ev.Path(sys.argv[1]), protocol, "cpu")
' "$OUT" "$@" >"$CLONE/runs/$name.log" 2>&1 </dev/null & echo $! >"$CLONE/runs/$name.pgid")
  echo "evidence_v3_resume: $name on core $core, seeds $*, log $CLONE/runs/$name.log"
}
worker worker-a 0 0 1 2 3
worker worker-b 1 7 6 5 4

# The copy-and-commit loop: one commit per newly finished run, of bench/results/evidence_v3/runs/ only.
(setsid bash -c '
while true; do
  for result in "$1"/runs/*/result.json; do
    [ -f "$result" ] || continue
    run=$(basename "$(dirname "$result")")
    git -C "$3" ls-files --error-unmatch "$2/$run/result.json" >/dev/null 2>&1 && continue  # committed already
    mkdir -p "$2/$run" && cp -r "$(dirname "$result")/predictions" "$2/$run/" && cp "$result" "$2/$run/"
    git -C "$3" add "$2/$run" && git -C "$3" commit -q -m "Evidence v3: run $run finished (commit $4)" -- "$2/$run" \
      && echo "$(date -u) committed $run"
  done
  sleep 120
done' sync "$OUT" "$STORED" "$HERE" "$COMMIT" >"$CLONE/runs/sync.log" 2>&1 </dev/null & echo $! >"$CLONE/runs/sync.pgid")
echo "evidence_v3_resume: finished runs are committed to $STORED (log $CLONE/runs/sync.log)"
