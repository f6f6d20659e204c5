#!/usr/bin/env bash
# The GPU checks of issue 17, run on a device-tool GPU machine from the repository root (after
# `python benchmarks/gpu/prepare_carry.py` here; carry `.gpu`). Stages: tests, demo, ranking, train (default: all).
# Each stage has its own time limit and writes its output under $OUT.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/pmmrec-site .gpu/wheels/*.whl 2>&1 | tail -1
export PYTHONPATH="$PWD:/tmp/pmmrec-site:$PWD/.gpu/site" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PMMREC_CACHE=/tmp/pmmrec-cache XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1
{ nvidia-smi -L; nproc; python3 -c "import torch, transformers, pydantic; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__, 'pydantic', pydantic.VERSION)"; } 2>&1 | tee "$OUT/env.txt"
stages=${*:-tests demo ranking train}
for stage in $stages; do
  started=$(date +%s)
  case $stage in
    tests)  # in parallel (pytest-xdist is in the image: 104 s on an H200); the browser and schemathesis tests need
      # chromium / schemathesis, which this image lacks
      timeout 270 python3 -m pytest -q -p no:cacheprovider -n 12 -rfEs --timeout 120 tests --ignore tests/test_serving_browser.py \
        --ignore tests/test_serving_schemathesis.py > "$OUT/tests.txt" 2>&1 ;;
    demo)
      timeout 100 python3 -m pmmrec demo --quick --device cuda --out /tmp/demo --quiet > "$OUT/demo.txt" 2>&1
      cp /tmp/demo/results.json "$OUT/demo_results.json" 2>/dev/null ;;
    ranking)
      timeout 120 python3 benchmarks/ranking.py --device cuda --items 1000000 --users 100000 --dim 768 --chunk 2048 \
        --repeats 3 --json "$OUT/ranking.json" > "$OUT/ranking.txt" 2>&1 ;;
    train)
      timeout 200 python3 benchmarks/gpu_train_step.py --device cuda --json "$OUT/gpu_train_step.json" > "$OUT/gpu_train_step.txt" 2>&1 ;;
  esac
  echo "stage $stage: exit $? in $(( $(date +%s) - started )) s" | tee -a "$OUT/env.txt"
done
