#!/usr/bin/env bash
# Every CUDA path in one run (< 8 minutes on one GPU), with a short report at the end.
#
#   bash benchmarks/gpu_check.sh --gather   # here, with ../shared: coco128 + pycocotools/thop wheels -> .gpu_check/
#   bash benchmarks/gpu_check.sh            # on the GPU machine (the device tool: carry .gpu_check)
#
# Runs: the CUDA-only tests (pytest -m cuda); step 1 for one epoch on coco128 at 320 px with AMP (loss finite,
# checkpoint loads strictly); step 2 for 2 epochs (256 images) from it, and 1 with --router-loss bce under AMP;
# test.py on the GPU (fp16) against the CPU (fp32) on the step-1 model (mAP@.5:.95 within 0.005); detect.py on a
# video; get_dynamic_thres.py on GPU (fp16) against the CPU (thresholds within 0.01); test.py --augment on the GPU;
# export.py --device 0; 2-process DDP on one GPU (skipped: NCCL refuses two ranks on one device; --sync-bn needs
# it); bench_speed.py --half at batch 1 and 32.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KIT="$ROOT/.gpu_check"
cd "$ROOT"

if [ "${1:-}" = "--gather" ]; then
    SHARED="${SHARED:-$ROOT/../shared}"
    [ -d "$SHARED/data/coco128" ] || { echo "gpu_check: no $SHARED/data/coco128 (set SHARED=...)"; exit 2; }
    rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/coco128/images/train2017"
    cp -r "$SHARED/data/coco128/labels" "$SHARED/data/coco128/train2017.txt" "$KIT/coco128/"
    # images re-encoded at 320 px on the long side (the check runs at 320; labels are normalised): 22 MB -> ~3 MB
    python -c "
import cv2, glob, os, sys
for f in glob.glob(sys.argv[1] + '/images/train2017/*.jpg'):
    im = cv2.imread(f); r = 320 / max(im.shape[:2])
    cv2.imwrite(sys.argv[2] + '/images/train2017/' + os.path.basename(f),
                cv2.resize(im, (round(im.shape[1] * r), round(im.shape[0] * r)), interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_JPEG_QUALITY, 90])" "$SHARED/data/coco128" "$KIT/coco128" || exit 1
    # what the device may lack beside torch, torchvision, opencv and numpy (it has no network)
    pip download -q --no-deps --only-binary=:all: -d "$KIT/wheels" pycocotools thop pyyaml tqdm scipy matplotlib \
        contourpy cycler fonttools kiwisolver packaging pyparsing python-dateutil six pytest iniconfig pluggy \
        2>&1 | grep -v '^WARNING' || true
    du -sh "$KIT"
    exit 0
fi

[ -d "$KIT/coco128" ] || { echo "gpu_check: run 'bash benchmarks/gpu_check.sh --gather' first (needs ../shared)"; exit 2; }
python -c "import torch; assert torch.cuda.is_available()" || { echo "gpu_check: no CUDA device"; exit 2; }
pip install -q --no-index --find-links "$KIT/wheels" "$KIT"/wheels/*.whl 2>&1 | tail -2
OUT="${OUT:-$KIT/out}"; mkdir -p "$OUT"
REPORT="$OUT/report.txt"; : > "$REPORT"
note() { echo "$*" | tee -a "$REPORT"; }
step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, one report line with the time and status
    local name="$1"; shift
    local t0=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "$(printf '%-10s %-4s %4ss  %s' "$name" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t0)) "$(tail -1 "$OUT/$name.log" | cut -c1-110)")"
    return $rc
}
DATA="$KIT/coco128.yaml"
printf 'train: %s\nval: %s\nnc: 80\nnames: %s\n' "$KIT/coco128/train2017.txt" "$KIT/coco128/train2017.txt" \
    "$(python -c "import yaml; print(yaml.safe_load(open('data/coco.yaml'))['names'])")" > "$DATA"
note "$(python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))")"

step tests python -m pytest -q -p no:xdist -p no:cacheprovider -o addopts="" -m cuda tests
step step1 python train_step1.py --workers 4 --device 0 --batch-size 16 --epochs 1 --img 320 \
    --cfg cfg/dy-yolov7-step1.yaml --weight '' --data "$DATA" --hyp hyp/hyp.scratch.p5.yaml \
    --project "$OUT/train" --name step1 --exist-ok
S1="$OUT/train/step1/weights/last.pt"
step loads python -c "
import sys, torch
from models.yolo import Model
from models.checkpoint import load_weights
m = Model('cfg/dy-yolov7-step1.yaml', nc=80); load_weights(m, '$S1', strict=True)
import csv; rows = list(csv.reader(open('$OUT/train/step1/results.csv')))
loss = float(rows[-1][4]); assert loss == loss and loss < 1e3, loss
print('step-1 checkpoint loads strictly; last total loss', loss)"
step step2 python train_step2.py --workers 4 --device 0 --batch-size 8 --epochs 2 --img 320 --adam \
    --cfg cfg/dy-yolov7-step2.yaml --weight "$S1" --data "$DATA" --hyp hyp/hyp.finetune.dynamic.adam.yaml \
    --project "$OUT/train" --name step2 --exist-ok
# --router-loss bce under CUDA AMP (the default there): its cross-entropy must not be an op autocast refuses
step step2_bce python train_step2.py --workers 4 --device 0 --batch-size 8 --epochs 1 --img 320 --adam \
    --cfg cfg/dy-yolov7-step2.yaml --weight "$S1" --data "$DATA" --hyp hyp/hyp.finetune.dynamic.adam.yaml \
    --router-loss bce --project "$OUT/train" --name step2_bce --exist-ok
for dev in 0 cpu; do
    step "test_$dev" python test.py --cfg cfg/dy-yolov7-step1.yaml --weight "$S1" --data "$DATA" --img-size 320 \
        --batch-size 16 --device "$dev" --task val --project "$OUT/test" --name "$dev" --exist-ok
done
step fp16_map python -c "
import re
def last_map(name):
    text = open('$OUT/test_' + name + '.log').read()
    return float(re.findall(r'^\s+all\s+\d+\s+\d+\s+\S+\s+\S+\s+\S+\s+(\S+)', text, re.M)[-1])
gpu, cpu = last_map('0'), last_map('cpu')
assert abs(gpu - cpu) <= 0.005, (gpu, cpu)
print(f'mAP@.5:.95 GPU fp16 {gpu:.4f}, CPU fp32 {cpu:.4f}')"
step video python -c "
import cv2, glob
files = sorted(glob.glob('$KIT/coco128/images/train2017/*.jpg'))[:30]
out = cv2.VideoWriter('$OUT/clip.mp4', cv2.VideoWriter_fourcc(*'mp4v'), 10, (640, 480))
for f in files: out.write(cv2.resize(cv2.imread(f), (640, 480)))
out.release(); print('30-frame clip written')"
step detect python detect.py --cfg cfg/dy-yolov7-step2.yaml --weight "$OUT/train/step2/weights/last.pt" \
    --source "$OUT/clip.mp4" --device 0 --img-size 320 --dy-thres 0.5 --project "$OUT/detect" --name video --exist-ok
# get_dynamic_thres.py on the fp16 CUDA model: the same score quantiles (the thresholds' source) as fp32 on the CPU
S2="$OUT/train/step2/weights/last.pt"
for dev in 0 cpu; do
    step "thres_$dev" python get_dynamic_thres.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" --data "$DATA" \
        --img-size 320 --batch-size 8 --device "$dev" --task val --project "$OUT/thres" --name "$dev" --exist-ok
done
step thres_fp16 python -c "
import json
gpu, cpu = (json.load(open('$OUT/thres/' + d + '/router.json'))['quantiles'] for d in ('0', 'cpu'))
worst = max(abs(a - b) for a, b in zip(gpu, cpu))
assert len(gpu) == len(cpu) and worst <= 0.01, (worst, len(gpu), len(cpu))
print(f'{len(gpu)} score quantiles, fp16 GPU vs fp32 CPU: largest difference {worst:.5f}')"
# test-time augmentation and routing together on CUDA (fp16): only its mAP line is checked
step augment python test.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" --data "$DATA" --img-size 320 \
    --batch-size 8 --device 0 --task val --augment --dy-thres 0.5 --project "$OUT/test" --name augment --exist-ok
# export traced on the GPU (--device 0): the graphs load and run on the CPU's onnxruntime
step export python export.py --cfg cfg/dy-yolov7-step2.yaml --weight "$S2" --num-classes 80 --img-size 320 \
    --device 0 --include onnx torchscript --out "$OUT/export"
note "ddp        skip        NCCL refuses two ranks on one GPU ('Duplicate GPU detected'); needs 2 GPUs"
step bench python benchmarks/bench_speed.py --device 0 --half --sizes 640 --batches 1 32 --reps 3
cat "$OUT/bench.log" >> "$REPORT"
echo "report: $REPORT"
