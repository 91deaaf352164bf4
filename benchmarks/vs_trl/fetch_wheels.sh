#!/usr/bin/env bash
# Downloads the TRL wheel that the GPU machine (no network there) installs, into .device/trl
# (git-ignored; the device tool carries it). Run from anywhere, on a machine with network.
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-python3}" -m pip download trl==1.16.0 --no-deps -d .device/trl
ls .device/trl
