#!/usr/bin/env bash
# The benchmark's GPU rows on a lent GPU machine (the device tool), from the repository root,
# with .kit built here first (`make device-kit`). Two calls, back to back (the machine stays
# warm between them; one call may run 600 s, and the session has 15 device minutes in all):
#
#   run(command="BENCHES=pipeline,detector,segment_cache bash bench/device/run.sh",
#       carry=[".kit"], timeout_s=420)
#   run(command="BENCHES=video,cold_start bash bench/device/run.sh", carry=[".kit"],
#       timeout_s=420)
#
# Installs the kit beside the machine's own packages (once per machine), then runs the
# benchmarks with a model deployment on the GPU: the job pipeline (its segment stage: geometry's
# wheels stay behind, see kit.py), detection, clicks, video and cold start. What comes back in
# $OUT: RESULTS_gpu.md, suite_gpu.json (rewritten after each benchmark: a call cut off keeps
# what it measured) and logs.tgz (each benchmark's output). Copy each call's suite_gpu.json here,
# then `python -m bench.suite --render first.json second.json --out bench/RESULTS_gpu.md
# --raw bench/results/suite_gpu.json` (the table and the merged reports).
#
# KIT, SITE and PYTHON can be set to rehearse it on another machine (CPU rows then).
set -euo pipefail
KIT=${KIT:-.kit}
SITE=${SITE:-/tmp/meshline-site}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}

if [ ! -f "$SITE/.installed" ]; then
  started=$(date +%s)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "$KIT"/wheels/*.whl
  "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$KIT/ray.tar.xz" "$SITE"
  touch "$SITE/.installed"
  echo "kit installed in $(( $(date +%s) - started )) s"
fi

export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
export PATH="$SITE/bin:$PATH"
export YOLO_OFFLINE=1  # ultralytics: no update checks or downloads (there is no network)
"$PYTHON" -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'

set +e
"$PYTHON" -m bench.suite \
  --benches "${BENCHES:-pipeline,detector,segment_cache,video,cold_start}" \
  --pipeline-stages segment --bench-timeout "${BENCH_TIMEOUT:-200}" \
  --out "$OUT/RESULTS_gpu.md" --raw "$OUT/suite_gpu.json" --logs "$OUT/logs"
status=$?
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat "$OUT/RESULTS_gpu.md" 2>/dev/null
exit $status
