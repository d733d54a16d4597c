#!/bin/bash
# Paired bench: old (pre-redesign, 0152a75) vs new, alternating, lavapipe.
set -u
export WGPU_BACKEND=vulkan
NEW=/work/main/target/release/selfish
OLD=/tmp/selfish-old
mkdir -p /tmp/pb
for i in 1 2 3; do
  $OLD bench --backend vulkan --configs paper --losses plain,margin:1 --no-matmul --no-profile --steps 20 --json > /tmp/pb/old-$i.json 2>/tmp/pb/old-$i.err
  $NEW bench --backend vulkan --configs paper --losses plain,margin:1 --no-matmul --no-profile --steps 20 --json > /tmp/pb/new-$i.json 2>/tmp/pb/new-$i.err
done
