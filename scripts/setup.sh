#!/usr/bin/env bash
# Idempotent environment setup: a project-local venv (.venv) with the pinned CPU stack.
# A second run reuses the venv and only re-checks the install (a few seconds).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
stamp="$venv/.installed"
want=$(cat pyproject.toml scripts/overrides.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'uv==0.13.9'
# torch 2.13.0+cpu lives only in the machine's local wheel folder; uv does not read pip's config.
wheels=$(pip config get global.find-links 2>/dev/null || echo /opt/wheels)
VIRTUAL_ENV="$venv" "$venv/bin/uv" pip install -q \
  --python "$venv/bin/python" \
  --find-links "$wheels" \
  --index-strategy unsafe-best-match \
  --overrides scripts/overrides.txt \
  -e ".[cpu,test]"
# Bytecode compiled once, here: where PYTHONDONTWRITEBYTECODE is set (as on the project's CI
# machines) every process would otherwise compile torch, transformers and vLLM from source on
# every start (a default job's start-up: 83 s instead of 37 s on 2 cores). A few vendored files
# are not Python 3 and fail to compile; they are never imported.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$venv/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
echo "$want" > "$stamp"
