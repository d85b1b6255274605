#!/usr/bin/env bash
# Install what is missing, then serve the site, build it, or run the whole test suite.
#
#   bash tools/setup.sh serve    # mkdocs serve on http://127.0.0.1:8000/annotated-dl/ (re-renders a lesson when you save it)
#   bash tools/setup.sh serve --quick  # the same, English edition only and no print page: a save shows in seconds
#   bash tools/setup.sh build    # mkdocs build --strict into site/
#   bash tools/setup.sh test     # the whole test suite, as CI runs it, then the demos on a fake GPU
#                                # (extra arguments go to pytest, and only that run happens)
#   bash tools/setup.sh pdf      # build the site, then print the book to site/book.pdf with Chromium
#                                # (extra arguments go to tools.literate.pdf, e.g. --stage 1, --language zh)
#
# System packages (Graphviz always; Chromium for the browser test and the PDF; a Chinese font for the
# PDF) come from apt when this runs as root on Debian or Ubuntu; anywhere else the script prints what to install and stops. Python packages come from
# pyproject.toml. Nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  serve|build|test|pdf) shift ;;
  *) echo "usage: bash tools/setup.sh {serve|build|test|pdf} [arguments]" >&2; exit 2 ;;
esac

python="${PYTHON:-python3}"

# ---- system packages -----------------------------------------------------------------------------------
missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
if [ "$mode" = test ] || [ "$mode" = pdf ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
# A printed page shows Chinese (the plan's own names) only with a font that has its glyphs.
if [ "$mode" = pdf ] && ! fc-list :lang=zh 2>/dev/null | grep -q .; then missing+=(fonts-wqy-microhei); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    echo "  Fedora:        sudo dnf install ${missing[*]}" >&2
    echo "  macOS:         brew install ${missing[*]/chromium/--cask chromium}" >&2
    echo "  (the browser test looks for the executable 'chromium' on PATH)" >&2
    exit 1
  fi
fi

# ---- Python packages -------------------------------------------------------------------------------------
# pip refuses to install into a Python the system manages (PEP 668: Debian 12, Ubuntu 23.04 and later), and
# Debian ships Python without pip: say what to do rather than fail inside pip.
pip_install() {
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "setup: $python has no pip (Debian/Ubuntu: apt-get install python3-pip python3-venv)" >&2
    exit 1
  fi
  if "$python" -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'; then
    echo "setup: the system manages $python (PEP 668), so pip will not install into it. Make a" >&2
    echo "  virtual environment and run this again inside it:" >&2
    echo "    $python -m venv .venv && . .venv/bin/activate && bash tools/setup.sh $mode" >&2
    exit 1
  fi
  "$python" -m pip install -q "$@"
}
# torch first and pinned, 2.13.0, the version this project is tested with. On Linux PyPI's build of it is
# the CUDA one (gigabytes): without an NVIDIA driver, the CPU wheel from PyTorch's own index (2.13.0+cpu,
# which pip prefers to 2.13.0 when both are offered).
if ! "$python" -c "import torch" >/dev/null 2>&1; then
  if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0, the CPU build"
    pip_install "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  else
    echo "setup: installing torch==2.13.0"
    pip_install "torch==2.13.0"
  fi
fi
extra=docs
{ [ "$mode" = test ] || [ "$mode" = pdf ]; } && extra=test
if ! "$python" - "$extra" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import distribution, PackageNotFoundError
from packaging.requirements import Requirement
dist = distribution("annotated-dl")
wanted = {sys.argv[1], "docs"}
for text in dist.requires or []:
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted):
        continue
    if req.name == "annotated-dl":
        continue
    if distribution(req.name).version not in req.specifier:
        sys.exit(1)
PY
then
  echo "setup: installing the project and its [$extra] extras from pyproject.toml"
  pip_install -e ".[$extra]"
fi

export NO_MKDOCS_2_WARNING=1
case "$mode" in
  serve) if [ "${1:-}" = --quick ]; then
           shift
           echo "setup: a quick preview: the English edition only, without the print page"
           export SITE_CHINESE=false SITE_PRINT_PAGE=false
         fi
         exec "$python" -m mkdocs serve --dev-addr 127.0.0.1:8000 "$@" ;;
  build) exec "$python" -m mkdocs build --strict "$@" ;;
  # With no arguments (as CI runs it), the demos' tests run a second time as if on a GPU
  # (tools/fake_cuda.py), where a CPU tensor beside a GPU one fails as it would on CUDA.
  # Both runs spread the test files over the cores (pytest-xdist, at most 4 workers: each
  # holds torch, transformers and a model or two, about 2 GB), one file per worker at a
  # time so that a file's fixtures are built once. A benchmark body still runs once.
  test)  if [ $# -gt 0 ]; then exec "$python" -m pytest "$@"; fi
         "$python" -m pytest -n auto --maxprocesses 4 --dist loadfile
         echo "setup: the demos again, with --device cuda on a fake GPU (tools/fake_cuda.py)"
         exec "$python" -m pytest -p tools.fake_cuda -q tests -n auto --maxprocesses 4 --dist loadfile ;;
  pdf)   "$python" -m mkdocs build --strict
         exec "$python" -m tools.literate.pdf --site site "$@" ;;
esac
