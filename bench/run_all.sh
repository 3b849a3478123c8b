#!/usr/bin/env bash
# Every benchmark behind the tables in bench/README.md, one after the other (never in parallel: they would share
# the cores). Writes one Markdown file per benchmark under $OUT (default bench/results/<date>-<device>/).
#   bash bench/run_all.sh                 # CPU here: about 40 minutes on 2 cores
#   DEVICE=cuda bash bench/run_all.sh     # on a GPU (AMP at inference)
# Toy fast-mode accuracy needs trained toy models: TOY_ZF / TOY_TS name their checkpoints (the quickstart's
# output/toy_zegformer/model_final.pth and output/toy_two_stage/model_final.pth by default); missing ones are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
OUT=${OUT:-bench/results/$(date +%F)-$DEVICE}
TOY_ZF=${TOY_ZF:-output/toy_zegformer/model_final.pth}
TOY_TS=${TOY_TS:-output/toy_two_stage/model_final.pth}
ZF_REF=configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml
TS_REF=configs/coco_stuff/two_stage_R101_vit16.yaml
FAST=MODEL.CLIP.FAST_MODE
mkdir -p "$OUT"
run() {  # run NAME COMMAND...: keep the table (stdout) in $OUT/NAME.md, progress on the terminal
  echo "== $1" >&2
  local name=$1
  shift
  "$@" --device "$DEVICE" >"$OUT/$name.md"
}
run inference_zegformer_ref python bench/bench_inference.py --config-file $ZF_REF --clip-arch ViT-B/16 --size 640 \
  --images 2 --clip-floor 100 --variant no_clip_branch MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH False \
  --variant fast_c0.2 $FAST.ENABLED True $FAST.MIN_CONTRIBUTION 0.2 \
  --variant fast_cap25 $FAST.ENABLED True $FAST.MIN_CONTRIBUTION 0.0 $FAST.MAX_QUERIES 25
run inference_two_stage_ref python bench/bench_inference.py --config-file $TS_REF --clip-arch ViT-B/16 --size 640 \
  --images 2 --clip-floor 100 --variant fast_cap25 $FAST.ENABLED True $FAST.MIN_CONTRIBUTION 0.0 $FAST.MAX_QUERIES 25
run scaling_ref python bench/bench_scaling.py --config-file $ZF_REF --clip-arch ViT-B/16 --size 640 \
  --masks 10 25 50 100 --vocabularies 20 171 847 --images 3
run text_coco python bench/bench_text.py --vocabularies coco_stuff_171 --templates selected8 --clip-arch ViT-B/16
run text_ade_full python bench/bench_text.py --vocabularies ade20k_full_847 --templates single --clip-arch ViT-B/16
for arch in zegformer two_stage; do
  weights=$([ "$arch" = zegformer ] && echo "$TOY_ZF" || echo "$TOY_TS")
  w=()
  [ -f "$weights" ] && w=(--weights "$weights")
  run inference_${arch}_toy python bench/bench_inference.py --config-file configs/toy/$arch.yaml --size 160 \
    --images 20 --clip-floor 32 "${w[@]}" --variant fast $FAST.ENABLED True
  if [ -f "$weights" ]; then
    run fast_mode_${arch}_toy python bench/bench_fast_mode.py --config-file configs/toy/$arch.yaml --weights "$weights" \
      --threads 1 $(for c in 0.05 0.1 0.15 0.2 0.25 0.3 0.35 0.4 0.45 0.5 0.6; do echo --variant c$c $FAST.MIN_CONTRIBUTION $c; done) \
      --variant c0.3_area $FAST.MIN_CONTRIBUTION 0.3 $FAST.MIN_MASK_AREA 0.002 \
      --variant c0.3_dup90 $FAST.MIN_CONTRIBUTION 0.3 $FAST.DUPLICATE_IOU 0.9 \
      --variant c0.3_cap8 $FAST.MIN_CONTRIBUTION 0.3 $FAST.MAX_QUERIES 8
    run single_pass_${arch}_toy python bench/bench_single_pass.py --config-file configs/toy/$arch.yaml \
      --weights "$weights" --threads 1 --warmup 2 --variant dense MODEL.CLIP.REGION_MODE dense
  fi
done
run single_pass_zegformer_ref python bench/bench_single_pass.py --config-file $ZF_REF --clip-arch ViT-B/16 --size 640 \
  --images 3 --warmup 1 --variant dense MODEL.CLIP.REGION_MODE dense
run single_pass_zegformer_ref_d2timer python bench/bench_single_pass_d2timer.py --config-file $ZF_REF \
  --clip-arch ViT-B/16 --size 640 --images 8 --variant dense MODEL.CLIP.REGION_MODE dense --order dense crops dense
for cfg in zegformer two_stage pixel_level; do
  run training_${cfg}_toy python bench/bench_training.py --config-file configs/toy/$cfg.yaml --size 160 --iters 10
done
run training_zegformer_ref python bench/bench_training.py --config-file $ZF_REF --clip-arch ViT-B/16 --batch-size 2 \
  --size 640 --iters 3 --warmup 1
echo "tables in $OUT" >&2
