#!/usr/bin/env bash
# The GPU device check, as one script (run from the repository root on a machine with CUDA):
#   1. the GAN bench on CUDA: fp32 vs --amp bf16, with and without --channels-last and --compile, 32 and 64 px;
#   2. one default `dvc repro` with gan.device: cuda, in a throw-away git copy, timed per stage;
#   3. the test suite with CUDA visible (device: auto picks it).
# Missing packages may travel as wheels in .whl/ (see the device tool's README); results go to $OUT.
# Everything else it writes goes under one scratch folder (mktemp, in $TMPDIR or /tmp), removed on exit
# however the script ends; nothing is written into the interpreter's own folder.
set -u
OUT=${OUT:-/tmp/sim2real-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
REPO=$PWD
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/sim2real-gpu-check.XXXXXX") || exit 1
trap 'rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# interpreter_overlay DIR TOOLS_DIR TOOL...: a throw-away interpreter folder DIR/bin holding a venv of the
# same Python that also loads the real interpreter's packages (a .pth), and links to TOOLS_DIR/TOOL.
# Tests look for dvc beside the interpreter (Path(sys.executable).parent / "dvc"); with DIR/bin first on
# PATH they find it there, and the real interpreter's folder is left as it was.
interpreter_overlay() {
  local dir=$1 tools=$2 tool; shift 2
  python3 -m venv --without-pip "$dir" && [ -x "$dir/bin/python3" ] || return 1
  local purelib
  purelib=$("$dir/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && [ -d "$purelib" ] \
    || return 1
  python3 -c 'import site; print("".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))' \
    > "$purelib/sim2real-gpu-check.pth" || return 1
  for tool in "$@"; do [ -e "$tools/$tool" ] && ln -s "$tools/$tool" "$dir/bin/$tool"; done
  return 0
}

if [ -d .whl ]; then
  site=$SCRATCH/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || exit 1
  export PYTHONPATH=$site:$REPO PATH=$site/bin:$PATH
  if interpreter_overlay "$SCRATCH/python" "$site/bin" dvc mlflow; then
    export PATH=$SCRATCH/python/bin:$PATH
  else
    echo "warning: no throw-away interpreter folder; tests that look for dvc beside python3 will not find it" >&2
  fi
fi
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

section() { echo; echo "===== $1 ($(date +%T))"; }

section "bench"
{
  for size in 32 64; do
    for opts in "" "--amp bf16" "--channels-last" "--amp bf16 --channels-last"; do
      echo "--- size $size $opts"
      timeout 300 python3 bench/bench_gan.py --device cuda --size "$size" --width 32 --blocks 6 --layers 3 \
        --channels 3 --batch 16 --rounds 3 --iters 10 --warmup 5 $opts
    done
  done
  for opts in "--compile"; do
    echo "--- size 64 $opts"
    timeout 300 python3 bench/bench_gan.py --device cuda --size 64 --width 32 --blocks 6 --layers 3 --channels 3 \
      --batch 16 --rounds 3 --iters 10 --warmup 5 --skip-translation $opts
  done
} 2>&1 | tee "$OUT/bench.log"

section "default dvc repro with gan.device: cuda"
work=$SCRATCH/repro
mkdir -p "$work"
cp -r pipeline stages dvc.yaml params.yaml pyproject.toml .dvc .dvcignore .gitignore "$work"/
(
  cd "$work" && sed -i 's/^  device: auto            # auto | cpu | cuda/  device: cuda/' params.yaml
  grep -n "device:" params.yaml
  git init -q && git -c user.name=t -c user.email=t@t add -A && git -c user.name=t -c user.email=t@t commit -qm init
  export SIM2REAL_TRACKING=on
  timeout 300 dvc repro 2>&1 | while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done
  cp reports/summary.md reports/gan/metrics.json "$OUT"/ 2>/dev/null
) 2>&1 | tee "$OUT/repro.log" | grep -E "Running stage|error|Error|\| " | tail -40

section "tests with CUDA visible (fast ones and the tiny dvc repro)"
{ timeout 130 python3 -m pytest -q -p no:cacheprovider -m "not slow" --durations=8
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_dvc_pipeline.py; } 2>&1 | tee "$OUT/pytest.log" | tail -40
section "done"
