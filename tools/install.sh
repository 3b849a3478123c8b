#!/usr/bin/env bash
# Installs zegseg and everything it needs into the active Python environment (a venv or conda env if one is
# active, else the interpreter that `python` names). Every version comes from constraints.txt. Idempotent: a
# second run checks, finds everything in place and changes nothing.
#
#   bash tools/install.sh            # everything, including the test and lint tools
#   ZEGSEG_SKIP_DETECTRON2=1 bash tools/install.sh   # never touch detectron2 (you manage it yourself)
#   ZEGSEG_SKIP_BROWSER=1 bash tools/install.sh      # no Chromium (only the web app's browser test needs it)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
constraints="$repo/constraints.txt"
py="${PYTHON:-python}"
pip=("$py" -m pip --disable-pip-version-check)
say() { printf '[install] %s\n' "$*"; }
pin() { grep -E "^$1[=<>]" "$constraints" | head -n 1; }

"$py" - <<'PY' || { echo "[install] zegseg needs Python >= 3.9" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 9) else 1)
PY
say "Python: $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

say "1/4 PyTorch and build tools: $(pin torch) $(pin torchvision) '$(pin setuptools)'"
"${pip[@]}" install -q -c "$constraints" "$(pin torch)" "$(pin torchvision)" "$(pin setuptools)" "$(pin numpy)"

d2_ok=$("$py" - <<'PY'
try:
    import detectron2
    from packaging.version import Version
    print("yes" if Version(detectron2.__version__.split("+")[0]) >= Version("0.6") else "old")
except Exception:
    print("no")
PY
)
if [ "${ZEGSEG_SKIP_DETECTRON2:-0}" = "1" ]; then
    say "2/4 detectron2: skipped (ZEGSEG_SKIP_DETECTRON2=1)"
elif [ "$d2_ok" = "yes" ]; then
    say "2/4 detectron2: $("$py" -c 'import detectron2,os; print(detectron2.__version__, "at", os.path.dirname(detectron2.__file__))') already importable, left as it is"
else
    d2="$(pin sal-detectron2)"
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    say "2/4 detectron2: installing $d2 (pure-Python part; its compiled ops target Python 3.10 and are not needed) into $site"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "${pip[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" "$d2"
    rm -rf "$site/detectron2" "$site"/sal_detectron2-*.dist-info
    cp -r "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$site/"
fi

say "3/4 zegseg (editable) with clip, fvcore, pycocotools, opencv, scipy, gradio, pytest, playwright, ruff and detectron2's requirements"
"${pip[@]}" install -q -c "$constraints" -e "$repo[app,dev]"

# Playwright drives the system's Chromium (tests/test_app_browser.py); it never downloads a browser of its own.
browser="${ZEGSEG_CHROMIUM:-$(command -v chromium chromium-browser google-chrome google-chrome-stable | head -n 1 || true)}"
if [ "${ZEGSEG_SKIP_BROWSER:-0}" = "1" ]; then
    say "4/4 Chromium for the browser test: skipped (ZEGSEG_SKIP_BROWSER=1)"
elif [ -n "$browser" ]; then
    say "4/4 Chromium for the browser test: $browser, left as it is"
elif command -v apt-get >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    say "4/4 Chromium for the browser test: installing Debian's chromium with apt-get"
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
        say "WARNING: apt-get could not install chromium; tests/test_app_browser.py fails until a Chromium is installed"
    fi
else
    say "WARNING: no Chromium and no apt-get: install Chromium or Chrome (or set ZEGSEG_CHROMIUM to its binary), or" \
        "tests/test_app_browser.py fails"
fi

"$py" -c 'import torch, detectron2, clip, zegseg, gradio, playwright; print("[install] ok: torch", torch.__version__, "| detectron2", detectron2.__version__, "| zegseg", zegseg.__version__, "| gradio", gradio.__version__, "| CUDA available:", torch.cuda.is_available())'
