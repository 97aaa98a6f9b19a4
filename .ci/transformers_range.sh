#!/usr/bin/env bash
# CI: both ends of the transformers range that requirements.txt declares (dependencies_emosllm.TRANSFORMERS_SPECIFIER).
# The full suite has run with requirements-train.txt's pin; here, for the oldest and the newest release of the range
# (each unless it is the installed pin), a virtual environment that sees the installed packages
# (--system-site-packages) but holds its own transformers runs the tests of what a user does with a saved folder:
# loading it (AutoConfig/AutoModel/AutoProcessor, fresh processes; a lean folder's LLM in bf16), its pipeline, and
# the dependency checks. Then the release just below the range must fail on import with the message that names the
# fix. A few minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS="5.20.0 5.24.0"
BELOW="5.19.0"
TESTS=(tests/test_dependencies.py tests/test_pipeline.py "tests/test_modeling.py::test_save_and_load_in_fresh_process"
       "tests/test_lean_and_fast.py::test_lean_llm_loads_in_bf16_where_native_and_answers_as_train_py_scores")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pinned="$(python -c 'import transformers; print(transformers.__version__)')"

venv_with() {  # venv_with VERSION: a venv over the installed packages with transformers==VERSION; prints its python
  python -m venv --system-site-packages "$work/$1"
  "$work/$1/bin/python" -m pip install -q "transformers==$1" >&2
  "$work/$1/bin/python" -c "import sys, transformers; sys.exit(transformers.__version__ != '$1')"
  echo "$work/$1/bin/python"
}

for version in $VERSIONS; do
  if [ "$version" = "$pinned" ]; then
    echo "transformers $version: the installed pin, tested by the full suite"
    continue
  fi
  echo "transformers $version: ${TESTS[*]}"
  "$(venv_with "$version")" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
done

echo "transformers $BELOW (below the range): importing EmoSLLM's code must fail, naming the fix"
old_python="$(venv_with "$BELOW")"
if "$old_python" -c "import configuration_emosllm" 2>"$work/below.err"; then
  echo "transformers $BELOW: EmoSLLM imported without an error" >&2
  exit 1
fi
tail -n 1 "$work/below.err"
grep -qF "but transformers $BELOW is installed" "$work/below.err"
grep -qF 'pip install "transformers>=' "$work/below.err"
