#!/usr/bin/env bash
# The main job: the deployment stack on the robosuite sim, headless. The sim node and the inference
# node run as separate processes talking over real DDS (the same graph `ros2 launch d2ppo_bringup
# sim.launch.py` starts), for N episodes of the policy's task; prints the success rate.
#
# Usage: scripts/run_sim_stack.sh [--policy policies/<name>] [--episodes N] [--video out.mp4]
#                                 [--horizon TICKS] [--seed S] [--results out.json] [--backend auto|torch|onnx] [--bag run.mcap]
#                                 [--realtime [--latency-ms MS] [--jitter-ms MS] [--drop P]] [--seam replace|ensemble|inpaint]
# --realtime: physics on the wall clock, the inference node in its robot configuration (frame trigger,
# pipelined, ONNX), camera frames delivered with the given latency / jitter / loss: the robot's graph.
# Default policy: the first package under policies/. Default episodes: 10. Default video:
# outputs/sim_stack/<policy>.mp4 (the first episode's agentview camera).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "run_sim_stack: $*" >&2; exit 2; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

policy="" episodes=10 video="" horizon="" seed=0 results="" backend=auto bag="" realtime=0 latency=0 jitter=0 drop=0 seam=""
while [ $# -gt 0 ]; do
  case "$1" in
    --policy) [ $# -ge 2 ] || die "--policy needs a folder"; policy=$2; shift 2 ;;
    --episodes) [ $# -ge 2 ] || die "--episodes needs a number"; episodes=$2; shift 2 ;;
    --video) [ $# -ge 2 ] || die "--video needs a file name"; video=$2; shift 2 ;;
    --horizon) [ $# -ge 2 ] || die "--horizon needs a number"; horizon=$2; shift 2 ;;
    --seed) [ $# -ge 2 ] || die "--seed needs a number"; seed=$2; shift 2 ;;
    --results) [ $# -ge 2 ] || die "--results needs a file name"; results=$2; shift 2 ;;
    --bag) [ $# -ge 2 ] || die "--bag needs a file name (run.mcap)"; bag=$2; shift 2 ;;
    --backend) [ $# -ge 2 ] || die "--backend needs auto, torch or onnx"; backend=$2; shift 2 ;;
    --realtime) realtime=1; shift ;;
    --latency-ms) [ $# -ge 2 ] || die "--latency-ms needs a number"; latency=$2; shift 2 ;;
    --jitter-ms) [ $# -ge 2 ] || die "--jitter-ms needs a number"; jitter=$2; shift 2 ;;
    --drop) [ $# -ge 2 ] || die "--drop needs a probability"; drop=$2; shift 2 ;;
    --seam) [ $# -ge 2 ] || die "--seam needs replace, ensemble or inpaint"; seam=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ "$episodes" =~ ^[1-9][0-9]*$ ]] || die "--episodes must be a positive integer, got '$episodes'"
[[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$seed'"
[ -z "$horizon" ] || [[ "$horizon" =~ ^[1-9][0-9]*$ ]] || die "--horizon must be a positive integer, got '$horizon'"
[[ "$backend" =~ ^(auto|torch|onnx)$ ]] || die "--backend must be auto, torch or onnx, got '$backend'"
num='^[0-9]+([.][0-9]+)?$'
[[ "$latency" =~ $num ]] || die "--latency-ms must be a number >= 0, got '$latency'"
[[ "$jitter" =~ $num ]] || die "--jitter-ms must be a number >= 0, got '$jitter'"
[[ "$drop" =~ $num ]] && awk -v p="$drop" 'BEGIN { exit !(p < 1) }' || die "--drop must be a probability in [0, 1), got '$drop'"
[ -z "$seam" ] || [[ "$seam" =~ ^(replace|ensemble|inpaint)$ ]] || die "--seam must be replace, ensemble or inpaint, got '$seam'"
if [ "$realtime" = 0 ] && { [ "$latency" != 0 ] || [ "$jitter" != 0 ] || [ "$drop" != 0 ]; }; then
  die "--latency-ms/--jitter-ms/--drop shape the real-time mode's cameras: add --realtime"
fi
if [ -n "$bag" ]; then  # the recording (d2ppo_bringup.bag): the same checks as its own, before anything starts
  [[ "$bag" == *.mcap ]] || die "--bag '$bag': the recording's name must end in .mcap"
  [ -d "$(dirname "$bag")" ] || die "--bag '$bag': the folder '$(dirname "$bag")' does not exist"
  [ ! -d "$bag" ] || die "--bag '$bag' is a folder, not a file name"
  [ -e "$bag.part" ] && probe_kept=1 || probe_kept=0
  { : >> "$bag.part"; } 2>/dev/null || die "--bag '$bag' cannot be written"
  [ $probe_kept = 1 ] || rm -f "$bag.part"
fi

if [ -z "$policy" ]; then
  for card in policies/*/policy.json; do
    [ -f "$card" ] && { policy=$(dirname "$card"); break; }
  done
  [ -n "$policy" ] || die "no policy package under policies/ (pass --policy <folder with policy.json>)"
fi
[ -d "$policy" ] || die "policy folder '$policy' does not exist"
[ -f "$policy/policy.json" ] || die "'$policy' is not a policy package: no policy.json in it"
[ -f "$policy/model.safetensors" ] || die "'$policy' is not a policy package: no model.safetensors in it"
if [ "$backend" = onnx ] && [ ! -f "$policy/policy.onnx" ]; then die "--backend onnx: '$policy' has no policy.onnx"; fi
name=$(basename "$(cd "$policy" && pwd)")
[ -n "$video" ] || video="outputs/sim_stack/$name.mp4"
[ -n "$results" ] || results="outputs/sim_stack/$name.json"
mkdir -p "$(dirname "$video")" "$(dirname "$results")"
rm -f "$results"

scripts/setup.sh
# Fail early, with the loader's message (file + problem), on a package that cannot be loaded.
.venv/bin/python -c '
import sys
from d2ppo.package import PolicyPackageError, load_policy
try:
    load_policy(sys.argv[1])
except PolicyPackageError as e:
    sys.exit(f"run_sim_stack: invalid policy package: {e}")
' "$policy" || exit 2

# Headless rendering; Fast DDS is the only RMW in the pip wheels.
export MUJOCO_GL=${MUJOCO_GL:-egl}
unset RMW_IMPLEMENTATION
# Keep the sim's DDS traffic on this host: a robot on the LAN listening on /policy/action_chunk in
# the same domain must never receive sim chunks.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}

args=(sim --policy "$policy" --episodes "$episodes" --seed "$seed" --video "$video" --results "$results" --backend "$backend")
[ -z "$horizon" ] || args+=(--horizon "$horizon")
[ "$realtime" = 0 ] || args+=(--realtime --latency-ms "$latency" --jitter-ms "$jitter" --drop "$drop")
[ -z "$seam" ] || args+=(--seam "$seam")
[ -z "$bag" ] || args+=(--bag "$bag")
echo "[run_sim_stack] policy $policy, $episodes episodes, seed $seed, ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0}"
set +e
.venv/bin/python -m d2ppo_bringup.run "${args[@]}"
rc=$?
set -e
[ $rc -eq 0 ] || { echo "run_sim_stack: the sim stack failed (exit $rc); see the [sim]/[inference] lines above" >&2; exit $rc; }
[ -f "$results" ] || { echo "run_sim_stack: no results were written to $results" >&2; exit 1; }

.venv/bin/python - "$results" "$policy" "$video" <<'EOF'
import json, sys

from d2ppo.package import wilson_interval

results, policy, video = sys.argv[1:4]
r = json.load(open(results))
lo, hi = wilson_interval(r["successes"], r["episodes"])
steps = [e["steps"] for e in r["per_episode"]]
timeouts = sum(e["lockstep_timeouts"] for e in r["per_episode"])
print(f"policy:       {policy}")
print(f"episodes:     {r['episodes']}  (steps per episode: mean {sum(steps) / len(steps):.0f}, lock-step timeouts {timeouts})")
print(f"success rate: {r['successes']}/{r['episodes']} = {r['success_rate']:.2f}  (95% Wilson interval {lo:.2f}-{hi:.2f})")
lat = [e["obs_to_chunk_ms"] for e in r["per_episode"] if e.get("obs_to_chunk_ms", {}).get("n")]
if lat:  # real-time mode
    ex = {k: sum(e["executor"].get(k, 0) for e in r["per_episode"]) for k in ("actions_executed", "actions_rejected", "actions_dropped_stale")}
    due = sum(ex.values())
    print(f"obs->chunk:   p50 {sorted(x['p50'] for x in lat)[len(lat) // 2]:.1f} ms, p99 {max(x['p99'] for x in lat):.1f} ms "
          f"(camera stamp -> chunk receipt at the sim; median of episode p50s, largest episode p99)")
    print(f"dropped:      {ex['actions_dropped_stale']}/{due} due actions overdue ({100 * ex['actions_dropped_stale'] / max(due, 1):.1f} %)")
if video and not lat:
    print(f"results:      {results}")
EOF
[ -z "$bag" ] || echo "recording:    $bag  (plot it: .venv/bin/python -m d2ppo_bringup.timeline $bag)"
