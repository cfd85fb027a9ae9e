#!/usr/bin/env bash
# GPU check: every CUDA path of the toolkit in one run, from a clone alone (nothing is downloaded), with a short
# report at the end. Run it first on the machine that will train, e.g. before an 8-GPU run:
#
#   bash benchmarks/gpu_check.sh                 # logs and outputs in runs/gpu_check/, the report in its report.txt
#   bash benchmarks/gpu_check.sh --out DIR       # elsewhere (a folder this script made before, or a new one)
#
# Estimated under 8 minutes on one recent GPU (not yet measured on one), about 1 more with 2 or more GPUs (the DDP
# run); about 1 minute on a 2-core CPU machine, where only the CPU parts run. Data: the project's synthetic
# generator (utils/data/synthetic.py: filled shapes, 3 classes) and the demo's shipped detector (data/demo/).
#
# Steps (CUDA: skipped with one line each where no CUDA device is visible; the others run on any machine):
#   env        torch, the CUDA devices it sees, the modules the steps import
#   data       synthetic sets: 160 images at 320 px (128 train, 32 val) for the Dy-YOLOv7 runs, and the demo's
#              640 at 128 px (its 128 held-out images)
#   tests      CUDA  the CUDA-only tests (pytest -m cuda)
#   step1      CUDA  train_step1.py, Dy-YOLOv7 from scratch, 1 epoch at 320 px with AMP
#   loads            its checkpoint loads strictly, its last training loss is finite
#   step2      CUDA  train_step2.py, 2 epochs (256 images) from it
#   step2_bce  CUDA  1 epoch with --router-loss bce under AMP (its cross-entropy must not be an op autocast refuses)
#   demo_cpu         test.py in fp32 on the CPU: the demo's detector on its held-out images, mAP@.5:.95 within 0.02
#                    of its manifest's
#   demo_gpu   CUDA  the same on the GPU (fp16)
#   fp16_map         GPU fp16 within 0.005 of CPU fp32
#   video            a 30-frame clip of synthetic images
#   detect     CUDA  detect.py on that clip with the step-2 model
#   thres_cpu        get_dynamic_thres.py on the step-2 model in fp32 on the CPU
#   thres_gpu  CUDA  the same on the GPU (fp16)
#   thres_fp16       their router-score quantiles (the thresholds' source) within 0.01
#   augment    CUDA  test.py --augment with routing on the GPU (fp16)
#   export     CUDA  export.py --device 0 (ONNX, TorchScript)
#   ddp        2 GPUs  2-process DDP with NCCL and --sync-bn (torch.distributed.run, GPUs 0 and 1): step 1 for one
#                    epoch, NCCL and SyncBatchNorm in its log, its checkpoint loads strictly
#   bench      CUDA  benchmarks/bench_speed.py --half at 640 px, batch 1 and 32 (its table in bench.log)
#
# Exit code: 0 when no step FAILED (skipped steps do not count; on a machine with 2 or more GPUs none is skipped),
# 1 when one did (its log is named in the report), 2 for a bad argument.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

OUT="$ROOT/runs/gpu_check"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (usage: bash benchmarks/gpu_check.sh [--out DIR])" >&2; exit 2 ;;
    esac
done
MARKER=".made-by-gpu_check"
if { [ -e "$OUT" ] && [ ! -d "$OUT" ]; } || { [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/$MARKER" ]; }; then
    echo "gpu_check: $OUT is not empty and was not made by this script; give --out a new folder" >&2; exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT" && touch "$OUT/$MARKER" || { echo "gpu_check: cannot write $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
export WANDB_MODE="${WANDB_MODE:-disabled}"  # no Weights & Biases run for a check

REPORT=()
record() {  # record NAME STATUS TIME DETAIL: one report line, printed now and again in the report at the end
    local line
    line="$(printf '%-10s %-7s %5s  %s' "$1" "$2" "$3" "$4")"
    printf -v "STATUS_$1" '%s' "$2"
    REPORT+=("$line")
    echo "$line"
}
status_of() { local var="STATUS_$1"; echo "${!var:-not run}"; }
ready() {  # ready NAME NEED...: true when every NEED holds (cuda: a CUDA device; gpus2: two; a step: it was ok)
    local name="$1" need; shift
    for need in "$@"; do
        case "$need" in
            cuda) [ "$GPUS" -ge 1 ] || { record "$name" skipped "" "no CUDA device visible"; return 1; } ;;
            gpus2) [ "$GPUS" -ge 2 ] || { record "$name" skipped "" \
                "$GPUS CUDA device(s) visible: 2-process DDP with NCCL (--sync-bn) needs 2 or more"; return 1; } ;;
            *) [ "$(status_of "$need")" = ok ] || { record "$name" skipped "" "needs $need ($(status_of "$need"))"
                                                   return 1; } ;;
        esac
    done
}
step() {  # step NAME COMMAND...: run it, its output in OUT/NAME.log; the report line has its last line
    local name="$1" t0=$SECONDS rc last; shift
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    last="$(tr '\r' '\n' < "$OUT/$name.log" | grep -v '^[[:space:]]*$' | tail -1 | sed 's/^[[:space:]]*//' | cut -c1-110)"
    if [ $rc = 0 ]; then
        record "$name" ok "$((SECONDS - t0))s" "$last"
    else
        record "$name" FAILED "$((SECONDS - t0))s" "exit $rc, see $OUT/$name.log: $last"
    fi
}
map_of() {  # the mAP@.5:.95 of test.py's 'all' line in a log
    python - "$1" <<'PY'
import re, sys
found = re.findall(r'^\s+all\s+\d+\s+\d+\s+\S+\s+\S+\s+\S+\s+(\S+)\s*$', open(sys.argv[1]).read(), re.M)
print(found[-1] if found else 'none')
PY
}

T0=$SECONDS
GPUS="$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null)"
GPUS="${GPUS:-0}"
echo "gpu_check: $GPUS CUDA device(s) visible; logs in $OUT"

check_env() {
    python - <<'PY'
import importlib, platform
import torch
missing = []
for name in ('torchvision', 'numpy', 'cv2', 'yaml', 'scipy', 'matplotlib', 'tqdm', 'thop', 'pycocotools', 'onnx',
             'onnxruntime', 'pytest'):
    try:
        importlib.import_module(name)
    except Exception as e:
        missing.append(f'{name} ({type(e).__name__})')
if torch.cuda.is_available():
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    where = f'{len(names)} x {names[0]}' if len(set(names)) == 1 else ', '.join(names)
else:
    where = 'no CUDA device' + ('' if torch.version.cuda else ' (this torch is a CPU-only build)')
print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), {where}')
if missing:
    raise SystemExit('cannot import: ' + ', '.join(missing) + ' (pip install -r requirements.txt)')
PY
}
step env check_env

DATA="$OUT/data/synthetic/data.yaml"   # 3 classes
DEMO_DATA="$OUT/data/demo/data.yaml"
NC=3
make_data() {
    python - "$OUT/data" <<'PY'
import sys
from pathlib import Path
from demo import DEMO_IMAGES
from utils.data.synthetic import generate_dataset
from utils.demo_detector import SHIPPED_DIR, read_manifest
out = Path(sys.argv[1])
generate_dataset(out / 'synthetic', 160, img_size=320, val_fraction=0.2, seed=0, num_classes=3)
d = read_manifest(SHIPPED_DIR)['data']  # the demo's held-out images: the set its manifest's mAP was measured on
generate_dataset(out / 'demo', DEMO_IMAGES, d['img'], d['val_fraction'], d['seed'], d['classes'])
count = lambda p: len(p.read_text().split())
print(f"synthetic: {count(out / 'synthetic/train.txt')} train + {count(out / 'synthetic/val.txt')} val at 320 px; "
      f"the demo's {count(out / 'demo/val.txt')} held-out at {d['img']} px")
PY
}
step data make_data

ready tests cuda && step tests python -m pytest -q -p no:xdist -p no:cacheprovider -o addopts="" -m cuda tests

S1="$OUT/train/step1/weights/last.pt"
S2="$OUT/train/step2/weights/last.pt"
ready step1 cuda data && step step1 python train_step1.py --workers 4 --device 0 --batch-size 16 --epochs 1 \
    --img 320 --cfg cfg/dy-yolov7-step1.yaml --weight '' --data "$DATA" --hyp hyp/hyp.scratch.p5.yaml \
    --project "$OUT/train" --name step1 --exist-ok
check_loads() {  # check_loads CHECKPOINT RESULTS_CSV
    python - "$1" "$2" "$NC" <<'PY'
import csv, math, sys
from models.checkpoint import load_weights
from models.yolo import Model
weights, results, nc = sys.argv[1], sys.argv[2], int(sys.argv[3])
load_weights(Model('cfg/dy-yolov7-step1.yaml', nc=nc), weights, strict=True)
loss = float(list(csv.DictReader(open(results)))[-1]['train/total_loss'])
assert math.isfinite(loss) and loss < 1e3, loss
print(f'checkpoint loads strictly; last training loss {loss:.4g}')
PY
}
ready loads step1 && step loads check_loads "$S1" "$OUT/train/step1/results.csv"
ready step2 cuda step1 && step step2 python train_step2.py --workers 4 --device 0 --batch-size 8 --epochs 2 \
    --img 320 --adam --cfg cfg/dy-yolov7-step2.yaml --weight "$S1" --data "$DATA" \
    --hyp hyp/hyp.finetune.dynamic.adam.yaml --project "$OUT/train" --name step2 --exist-ok
ready step2_bce cuda step1 && step step2_bce python train_step2.py --workers 4 --device 0 --batch-size 8 \
    --epochs 1 --img 320 --adam --cfg cfg/dy-yolov7-step2.yaml --weight "$S1" --data "$DATA" \
    --hyp hyp/hyp.finetune.dynamic.adam.yaml --router-loss bce --project "$OUT/train" --name step2_bce --exist-ok

# the demo's detector (trained, so its mAP is far from 0) in fp32 on the CPU, then in fp16 on the GPU
demo_test() {  # demo_test DEVICE
    python test.py --cfg cfg/dy-yolov7-tiny-step1.yaml --weight data/demo/dy-yolov7-tiny-demo.pt \
        --data "$DEMO_DATA" --img-size 128 --batch-size 32 --device "$1" --task val \
        --project "$OUT/test" --name "demo_$1" --exist-ok || return
    python - "$(map_of "$OUT/demo_$2.log")" <<'PY'
import sys
from utils.demo_detector import SHIPPED_DIR, read_manifest
if sys.argv[1] == 'none':
    raise SystemExit("no mAP line in test.py's output")
got = float(sys.argv[1])
expected = read_manifest(SHIPPED_DIR)['metrics']['demo_held_out']['all']['hard']['mAP@.5:.95']
assert abs(got - expected) <= 0.02, f"demo detector's held-out mAP@.5:.95 {got:.3f}, its manifest's {expected:.3f}"
print(f"demo detector's held-out mAP@.5:.95 {got:.3f} (manifest {expected:.3f})")
PY
}
ready demo_cpu data && step demo_cpu demo_test cpu cpu
ready demo_gpu cuda data && step demo_gpu demo_test 0 gpu
compare_maps() {
    python - "$(map_of "$OUT/demo_gpu.log")" "$(map_of "$OUT/demo_cpu.log")" <<'PY'
import sys
if 'none' in sys.argv[1:]:
    raise SystemExit("no mAP line in a test.py output")
gpu, cpu = (float(v) for v in sys.argv[1:])
assert abs(gpu - cpu) <= 0.005, f'mAP@.5:.95 GPU fp16 {gpu:.3f}, CPU fp32 {cpu:.3f}: more than 0.005 apart'
print(f'mAP@.5:.95 GPU fp16 {gpu:.3f}, CPU fp32 {cpu:.3f}')
PY
}
ready fp16_map demo_cpu demo_gpu && step fp16_map compare_maps

make_clip() {
    python - "$OUT/data/synthetic" "$OUT/clip.mp4" <<'PY'
import cv2, glob, sys
files = sorted(glob.glob(sys.argv[1] + '/images/train/*.jpg'))[:30]
out = cv2.VideoWriter(sys.argv[2], cv2.VideoWriter_fourcc(*'mp4v'), 10, (640, 480))
assert out.isOpened(), 'OpenCV cannot write mp4v video here'
for f in files:
    out.write(cv2.resize(cv2.imread(f), (640, 480)))
out.release()
assert cv2.VideoCapture(sys.argv[2]).get(cv2.CAP_PROP_FRAME_COUNT) == len(files) == 30
print(f'{len(files)}-frame clip written')
PY
}
ready video data && step video make_clip
ready detect cuda step2 video && step detect python detect.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" \
    --num-classes "$NC" --data "$DATA" --source "$OUT/clip.mp4" --device 0 --img-size 320 --dy-thres 0.5 \
    --project "$OUT/detect" --name video --exist-ok

# get_dynamic_thres.py on the fp16 CUDA model: the same score quantiles (the thresholds' source) as fp32 on the CPU
thres() {  # thres DEVICE NAME
    python get_dynamic_thres.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" --data "$DATA" --img-size 320 \
        --batch-size 8 --device "$1" --task val --project "$OUT/thres" --name "$2" --exist-ok
}
ready thres_cpu step2 && step thres_cpu thres cpu cpu
ready thres_gpu cuda step2 && step thres_gpu thres 0 gpu
compare_thres() {
    python - "$OUT/thres" <<'PY'
import json, sys
gpu, cpu = (json.load(open(f'{sys.argv[1]}/{d}/router.json'))['quantiles'] for d in ('gpu', 'cpu'))
worst = max(abs(a - b) for a, b in zip(gpu, cpu))
assert len(gpu) == len(cpu) and worst <= 0.01, (worst, len(gpu), len(cpu))
print(f'{len(gpu)} router-score quantiles, GPU fp16 against CPU fp32: largest difference {worst:.5f}')
PY
}
ready thres_fp16 thres_cpu thres_gpu && step thres_fp16 compare_thres

augment() {  # only that it runs: the model has trained for one epoch
    python test.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" --data "$DATA" --img-size 320 --batch-size 8 \
        --device 0 --task val --augment --dy-thres 0.5 --project "$OUT/test" --name augment --exist-ok || return
    echo "test.py --augment with routing ran: mAP@.5:.95 $(map_of "$OUT/augment.log") (a 1-epoch model)"
}
ready augment cuda step2 && step augment augment
# traced on the GPU; the graphs are checked on the CPU's onnxruntime
ready export cuda step2 && step export python export.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" \
    --num-classes "$NC" --img-size 320 --device 0 --include onnx torchscript --out "$OUT/export"

# 2-process DDP as the 8-GPU recipe runs it (NCCL, --sync-bn), on GPUs 0 and 1
ddp_run() {
    python -m torch.distributed.run --standalone --nproc_per_node 2 train_step1.py --workers 4 --device 0,1 \
        --sync-bn --batch-size 16 --epochs 1 --img 320 --cfg cfg/dy-yolov7-step1.yaml --weight '' --data "$DATA" \
        --hyp hyp/hyp.scratch.p5.yaml --project "$OUT/train" --name ddp --exist-ok || return
    grep -Eq 'DDP: rank 0/2, .*nccl on cuda' "$OUT/ddp.log" || { echo 'no "DDP: rank 0/2 ... nccl" line'; return 1; }
    grep -q 'Using SyncBatchNorm()' "$OUT/ddp.log" || { echo '--sync-bn did not convert BatchNorm'; return 1; }
    check_loads "$OUT/train/ddp/weights/last.pt" "$OUT/train/ddp/results.csv" | sed 's/^/2 ranks, NCCL, SyncBatchNorm; /'
    return "${PIPESTATUS[0]}"
}
ready ddp gpus2 data && step ddp ddp_run

bench() {
    python benchmarks/bench_speed.py --device 0 --half --sizes 640 --batches 1 32 --reps 3 || return
    echo "Dy-YOLOv7 fp32 and fp16 at batch 1 and 32: table in $OUT/bench.log"
}
ready bench cuda && step bench bench

ok=0; failed=0; skipped=0
for line in "${REPORT[@]}"; do
    case "$(echo "$line" | awk '{print $2}')" in ok) ok=$((ok + 1)) ;; FAILED) failed=$((failed + 1)) ;;
                                                 *) skipped=$((skipped + 1)) ;; esac
done
if [ $failed -gt 0 ]; then
    verdict="see the logs of the FAILED steps"
elif [ $skipped = 0 ]; then
    verdict="all ok"
else
    verdict="every step that ran is ok"
fi
[ "$GPUS" -lt 1 ] && verdict="$verdict; no CUDA device visible, so only the CPU parts ran: not yet a GPU check"
[ "$GPUS" = 1 ] && verdict="$verdict; one CUDA device visible, so the 2-process DDP run was skipped"
{
    echo
    echo "gpu_check report ($((SECONDS - T0)) s; logs in $OUT)"
    printf '%s\n' "${REPORT[@]}"
    echo "$ok ok, $failed FAILED, $skipped skipped: $verdict"
} | tee "$OUT/report.txt"
[ $failed = 0 ]
