# Sourced by scripts/run and scripts/test: make .venv and install tether into it (editable, with
# the C accelerator built when a compiler exists). $1: the pip extras, e.g. "" or "[test]".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "scripts: creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed$1"
# Reinstall when the package metadata or the C source changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] \
   || [ "$root/src/tether/accel/_speedups.c" -nt "$stamp" ]; then
  echo "scripts: installing tether$1 into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$1"
  touch "$stamp"
fi
