#!/usr/bin/env bash
# CSG+ ablation at a reduced budget (ResNet-20, 5,000 F-MNIST images, 6 epochs, 2,000 test images), 3 seeds

export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
B="--data fashion-mnist --arch resnet20 --epochs 6 --subset 5000 --test-subset 2000 --eval-every 0 --no-progress"
for s in 0 1 2; do
  while read -r name flags; do
    
    out=${RUNS:-runs/ablation}/$name-seed$s
    [ -f $out/metrics.json ] && continue
    if [ -f $out/checkpoint.safetensors ]; then extra=--resume; else extra=""; rm -rf $out; fi
    echo "$(date +%T) start $name-seed$s" >&2
    csg train $B --seed $s $flags $extra --out $out 
    echo "$(date +%T) end $name-seed$s rc=$?" >&2
  done <<'LIST'
std --method std
csg-joint --method csg --schedule joint
csg-plus --method csg-plus
no-suppression --method csg-plus --suppression-weight 0
no-head --method csg-plus --class-head-weight 0
gate-frozen --method csg-plus --gate-follows-activation false
with-lambda1 --method csg-plus --lambda1 1
picnn-model --method picnn --picnn-v-optimizer model
picnn-own --method picnn --picnn-v-optimizer own
LIST
done
