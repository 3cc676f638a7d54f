#!/bin/bash
# Container entrypoint: training by default, any other command as given.
#   (no arguments)                 accelerate launch harness/train.py          every GPU the container sees
#   key=value ... / --config FILE  accelerate launch harness/train.py "$@"
#   --<accelerate option> ...      accelerate launch "$@"   e.g. --config_file launch/accelerate/node_8gpu.yaml harness/train.py ...
#   anything else                  run as is: bash, python -m harness.sweep ..., pytest
# NVIDIA's entrypoint runs first when the image has it: it prints the image banner and warns when shared
# memory is too small (DataLoader workers hang without --ipc=host, as the seeds warn).
set -euo pipefail

case "${1:-}" in
  "" | --config | --config=*) set -- accelerate launch harness/train.py "$@" ;;
  --*) set -- accelerate launch "$@" ;;
  *=*) set -- accelerate launch harness/train.py "$@" ;;
esac

NV=/opt/nvidia/nvidia_entrypoint.sh
if [ -x "$NV" ]; then
  exec "$NV" "$@"
fi
exec "$@"
