#!/bin/bash
# runs per hour at 1, 2, 4 jobs on lavapipe: 4 jobs (plain, seeds 1..4), paper config, 40 steps each + the final evaluation
export WGPU_BACKEND=vulkan
cd /work/main
for j in 1 2 4; do
  rm -rf /tmp/jobs-$j
  s=$(date +%s.%N)
  ./target/release/selfish experiment --backend vulkan --steps 40 --margins none --seeds 4 --eval-interval 0 --out /tmp/jobs-$j --no-report --jobs $j > /tmp/jobs-$j.log 2>&1
  e=$(date +%s.%N)
  echo "jobs=$j wall=$(echo "$e - $s" | bc)"
done
