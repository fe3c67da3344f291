#!/usr/bin/env bash
# SE-ResNet-50 vs ResNet-50 throughput on one GPU, bf16: train step and
# inference, SE overhead, MFU against the measured bf16 matmul peak, and
# timm/PyTorch side by side. Prints one table last and writes it, with the
# raw JSON and log of every run, to $OUT.
#
# On any machine with a CUDA GPU, from a checkout:
#   python3 -m venv .venv && . .venv/bin/activate
#   pip install -r requirements.txt && pip install --no-deps -e .
#   pip install 'jax[cuda12]==<the jax pin>'   # or cuda13, as the driver needs
#   pip install torch timm          # optional: the side-by-side runs
#   bash tools/gpu_benchmark.sh     # OUT=/some/dir to keep the results
# (A python3 without ml-collections, e.g. a bare JAX image, can take its
# wheel from .whl/: pip download --no-deps -d .whl ml-collections.)
# Sized for <= 10 minutes on one H200 (each run has its own time limit;
# compilations are cached across runs). No TensorFlow is needed or imported.
#
# Knobs (environment): MODEL (seresnet50), BATCHES ("256 512": the first
# also runs inference and the timm side by side), DTYPE (bf16), SIZE (224),
# REPS (5), STEPS (10), TOTAL_S (560: all runs; each gets what is left),
# TIMM (1), PYTHON.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/se_flax_gpu_benchmark}"
mkdir -p "$OUT"
MODEL="${MODEL:-seresnet50}"
BATCHES="${BATCHES:-256 512}"
DTYPE="${DTYPE:-bf16}"
SIZE="${SIZE:-224}"
REPS="${REPS:-5}"
STEPS="${STEPS:-10}"
TOTAL_S="${TOTAL_S:-560}"
TIMM="${TIMM:-1}"
PY="${PYTHON:-python3}"
start=$(date +%s)

if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/se_flax_site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/se_flax_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "ml_collections missing: pip install -r requirements.txt, or put" \
         "its wheel in .whl/" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Later runs reuse earlier compilations of the same programs.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/se_flax_jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv 2>/dev/null
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
      flax.__version__, "optax", optax.__version__, jax.devices())'
} 2>&1 | tee "$OUT/env.txt"

bench() {  # bench NAME ARGS...: one benchmark run, logged, time-limited.
  local name=$1; shift
  local left=$(( TOTAL_S - ($(date +%s) - start) ))
  if [ $left -lt 60 ]; then echo "== $name skipped: ${left} s left"; return; fi
  echo "== $name ($(( $(date +%s) - start )) s elapsed, ${left} s left): $*"
  timeout "$left" "$PY" -m se_flax.benchmark --model "$MODEL" \
      --dtype "$DTYPE" --image_size "$SIZE" --reps "$REPS" \
      --steps "$STEPS" --json "$OUT/$name.json" "$@" \
      > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || echo "== $name failed or timed out (rc=$rc)"
}

first=1
for b in $BATCHES; do
  if [ $first -eq 1 ]; then
    bench "b${b}" --batch "$b" --kinds train,infer --se_overhead
    first=0
  else
    bench "b${b}" --batch "$b" --kinds train --se_overhead
  fi
done
if [ "$TIMM" = 1 ]; then
  b=${BATCHES%% *}
  # JAX takes 75% of the GPU by default; leave room for the torch worker.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 bench "timm_b${b}" --batch "$b" \
      --kinds train,infer --timm
fi

"$PY" - "$OUT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, sys
out = sys.argv[1]
rows, notes = [], []
for path in sorted(glob.glob(os.path.join(out, '*.json')), key=os.path.getmtime):
  r = json.load(open(path))
  name = os.path.basename(path)[:-5]
  ratios = {(x['kind'], x['denominator']): x for x in r['ratios']}
  peak = r['peak']['flops_per_s'] / 1e12
  for v in r['variants']:
    ratio = ''
    for (kind, den), x in ratios.items():
      if kind == v['kind'] and x['numerator'] == v['label']:
        ratio += (f" vs {den}: x{x['time_ratio']:.3f} "
                  f"({x['time_ratio_min']:.3f}-{x['time_ratio_max']:.3f})")
    fusion = v.get('se_fusion') or {}
    rows.append(
        f"| {name} | {v['label']} | {v['kind']} | {v['batch']} | "
        f"{v['images_per_s']:.0f} | {v['step_ms']:.1f} | "
        f"{100 * (v.get('mfu') or 0):.1f}% | {peak:.0f} | "
        f"{v['compile_s'] or 0:.0f} | "
        f"{(v['xla_memory_bytes'] or 0) / 2**30:.1f} | "
        f"{fusion.get('fused', '-')}/{fusion.get('se_blocks', '-')} |"
        f"{ratio} |")
  pdm = r.get('peak_device_memory')
  notes.append(f"{name}: load {r['env']['loadavg_before']}, "
               f"peak device memory {pdm / 2**30 if pdm else 0:.1f} GiB, "
               f"{r['env']['device_kind']} x{r['env']['devices']}, "
               f"jax {r['env']['jax']}; " + '; '.join(r.get('notes', [])))
print('| run | variant | kind | batch | img/s | step ms | MFU | peak TFLOP/s '
      '| compile s | XLA GiB | SE fused | time ratio (paired, min-max) |')
print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|')
print('\n'.join(rows))
print()
print('\n'.join(notes))
EOF
echo "total $(( $(date +%s) - start )) s"
