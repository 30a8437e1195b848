#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the apt tools of the browser tests (tools/install_web_deps.sh),
# the package with its test extra, and tf_keras (Keras 2, tests/load/test_tf_keras_legacy.py). tf_keras declares
# `tensorflow` as its requirement, which on Linux would pull the CUDA build next to the test extra's tensorflow-cpu
# (both write the same `tensorflow` package), so it is installed without dependencies, at the installed TensorFlow's
# minor version (tf_keras releases track TensorFlow's). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_web_deps.sh
python3 -m pip install -q -e ".[test]"
tf=$(python3 -c "import importlib.metadata as m; print('.'.join(m.version('tensorflow-cpu').split('.')[:2]))" \
     2>/dev/null || true)
if [ -n "$tf" ] && ! python3 -c "import importlib.metadata as m, sys; sys.exit(not m.version('tf_keras').startswith('$tf.'))" \
     2>/dev/null; then
  python3 -m pip install -q --no-deps "tf_keras==$tf.*"
fi
