#!/usr/bin/env bash
# Source ROS 2 Jazzy and the D2PPO workspace, set the robot profile's DDS defaults and SROS2, then run the
# command (ros2 launch / ros2 run / bash).
#
# DDS: every KEY=VALUE of $D2PPO_LAUNCH_DIR/dds.env whose variable is still unset is exported (compose
# already sets them through `env_file:`; this covers a plain `docker run`; `-e` always wins).
# SROS2: security is enforced only when $ROS_SECURITY_KEYSTORE (default /opt/d2ppo/sros2_keystore, the
# folder compose mounts) holds a keystore made by `ros2 security create_keystore` (its public CA
# certificates and the signed governance file); an empty or missing folder leaves security off.
# Each node then needs an enclave of its own: docs/bringup.md, "SROS2".
#
# D2PPO_ENTRYPOINT_DRY_RUN=1 prints the resulting settings and exits before sourcing ROS (tests run it so).
set -e

launch_dir=${D2PPO_LAUNCH_DIR:-/opt/d2ppo/launch}
if [ -f "$launch_dir/dds.env" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]}
    [ -n "${!key+set}" ] || export "$key=${BASH_REMATCH[2]}"
  done < "$launch_dir/dds.env"
else
  echo "[entrypoint] no $launch_dir/dds.env: DDS on ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0}, range ${ROS_AUTOMATIC_DISCOVERY_RANGE:-SUBNET}" >&2
fi

keystore=${ROS_SECURITY_KEYSTORE:-/opt/d2ppo/sros2_keystore}
if [ -f "$keystore/enclaves/governance.p7s" ] && [ -f "$keystore/public/identity_ca.cert.pem" ] \
   && [ -f "$keystore/public/permissions_ca.cert.pem" ]; then
  export ROS_SECURITY_KEYSTORE=$keystore ROS_SECURITY_ENABLE=true
  export ROS_SECURITY_STRATEGY=${ROS_SECURITY_STRATEGY:-Enforce}
  echo "[entrypoint] SROS2 on: keystore $keystore, strategy $ROS_SECURITY_STRATEGY" >&2
else
  if [ "${ROS_SECURITY_ENABLE:-}" = true ]; then
    echo "[entrypoint] ROS_SECURITY_ENABLE=true but $keystore holds no keystore" >&2
    exit 1
  fi
  echo "[entrypoint] SROS2 off: no keystore in $keystore (docs/bringup.md, SROS2)" >&2
fi
echo "[entrypoint] DDS: ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0} ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-SUBNET} ROS_STATIC_PEERS=${ROS_STATIC_PEERS:-}" >&2

if [ "${D2PPO_ENTRYPOINT_DRY_RUN:-0}" = 1 ]; then
  env | grep -E '^ROS_' | sort
  exit 0
fi
source /opt/ros/jazzy/setup.bash
source /opt/d2ppo/ros2_ws/install/setup.bash
exec "$@"
