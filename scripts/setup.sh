#!/usr/bin/env bash
# Usage: bash scripts/setup.sh [--dev]
# Sets up the Python environment ncslim runs in (idempotent) and prints that environment's bin
# directory: the only line on stdout; progress and errors go to stderr.
# - Environment: an active virtual environment ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX) is
#   used as it is; otherwise the project's own .venv/, made with `python3 -m venv` (python3-venv
#   is installed with apt, as root or via sudo, when missing). Nothing goes into a system Python.
# - torch: one already in that environment is kept. Otherwise $NCSLIM_TORCH, if set, is what pip
#   installs (e.g. NCSLIM_TORCH="torch --index-url https://download.pytorch.org/whl/cu126");
#   else where `nvidia-smi -L` sees a GPU, PyPI's torch (a CUDA build); else a CPU build: the
#   newest +cpu torch among pip's configured sources, or one from PyTorch's CPU index.
# - ncslim in editable mode (--dev: with its test tools), and Fashion-MNIST from Debian's
#   dataset-fashion-mnist. A second run with everything in place runs neither pip nor apt.
# Every error is one line naming the problem and the fix, with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 3>&1 1>&2
ROOT=$PWD
CPU_INDEX=https://download.pytorch.org/whl/cpu
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { echo "setup.sh: $*"; }
die() { echo "setup.sh: error: $*"; exit 1; }

DEV=
for arg in "$@"; do
  case $arg in
    --dev) DEV=dev ;;
    *) die "unknown argument '$arg': the only option is --dev (bash scripts/setup.sh [--dev])" ;;
  esac
done

# --- root, apt -----------------------------------------------------------------------------
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}
can_apt() {
  command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }
}
apt_install() {
  as_root apt-get -qq -o DPkg::Lock::Timeout=300 update || return 1
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" >/dev/null || return 1
}

# --- Python --------------------------------------------------------------------------------
# Prints "MAJOR.MINOR HAS_ENSUREPIP HAS_PIP"; written to run on any Python 3.
PROBE='import sys, importlib.util as u
print("%d.%d %d %d" % (sys.version_info[0], sys.version_info[1],
      u.find_spec("ensurepip") is not None, u.find_spec("pip") is not None))'
probe() {  # probe PYTHON -> sets VER, ENSUREPIP, HASPIP; fails if PYTHON does not run
  local out
  out=$("$1" -c "$PROBE" 2>/dev/null) || return 1
  read -r VER ENSUREPIP HASPIP <<<"$out"
}
new_enough() {  # VER >= 3.10
  local major=${VER%%.*} minor=${VER#*.}
  [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 10 ]; }
}
too_old() { die "ncslim needs Python >= 3.10, but $1 is Python $VER: install a newer python3 (or activate a virtual environment or conda env that has one) and rerun"; }

VENV=$ROOT/.venv
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then ENV=$VIRTUAL_ENV; KIND="active virtual environment"
  else ENV=$CONDA_PREFIX; KIND="active conda environment"; fi
  PY=$ENV/bin/python
  probe "$PY" || die "the $KIND $ENV has no working bin/python: deactivate it (or recreate it) and rerun"
  new_enough || too_old "the $KIND $ENV"
  [ "$HASPIP" = 1 ] || die "the $KIND $ENV has no pip: run '$PY -m ensurepip' (conda: 'conda install pip') and rerun"
  NEED_VENV=
else
  ENV=$VENV; KIND=".venv"; PY=$VENV/bin/python; NEED_VENV=1
  if [ -x "$PY" ] && probe "$PY" && new_enough && [ "$HASPIP" = 1 ]; then NEED_VENV=; fi
fi

APT_PKGS=()
if [ -n "$NEED_VENV" ]; then
  BASE=$(command -v python3) || die "python3 is not installed: install it (Debian/Ubuntu, as root: apt-get install python3 python3-venv), or activate a virtual environment with Python >= 3.10, and rerun"
  probe "$BASE" || die "$BASE does not run: repair or reinstall python3 (Debian/Ubuntu, as root: apt-get install --reinstall python3), then rerun"
  new_enough || too_old "$BASE"
  [ "$ENSUREPIP" = 1 ] || APT_PKGS+=(python3-venv)
fi
DATA_MISSING=
if [ ! -d /usr/share/datasets/fashion-mnist ] && { [ -z "${NCSLIM_DATA:-}" ] || [ ! -d "$NCSLIM_DATA/fashion-mnist" ]; }; then
  DATA_MISSING=1
  if can_apt; then APT_PKGS+=(dataset-fashion-mnist); fi
fi

if [ ${#APT_PKGS[@]} -gt 0 ]; then
  if can_apt; then
    say "installing ${APT_PKGS[*]} with apt-get"
    apt_install "${APT_PKGS[@]}" || die "apt-get install ${APT_PKGS[*]} failed (see above): fix apt (as root: apt-get update; apt-get install ${APT_PKGS[*]}) and rerun"
    probe "$BASE" || true
  fi
  if [ "$ENSUREPIP" != 1 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      die "$BASE cannot make a virtual environment (no venv/ensurepip module): install your system's python3 venv package (Debian/Ubuntu: apt-get install python3-venv), or activate a virtual environment, and rerun"
    elif ! can_apt; then
      die "$BASE cannot make a virtual environment (python3-venv is missing) and installing it needs root: have an administrator run 'apt-get install python3-venv' (or rerun as root), or activate a virtual environment, and rerun"
    else
      die "$BASE still has no venv/ensurepip module after apt-get install python3-venv: install python3.${VER#*.}-venv (as root: apt-get install python3.${VER#*.}-venv), or activate a virtual environment, and rerun"
    fi
  fi
fi
if [ -n "$DATA_MISSING" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  say "note: Fashion-MNIST is not in /usr/share/datasets/fashion-mnist and cannot be installed here without root: run 'apt-get install dataset-fashion-mnist' as root, or let ncslim fetch it with --download"
fi

if [ -n "$NEED_VENV" ]; then
  say "creating .venv with $BASE (Python $VER)"
  "$BASE" -m venv --clear "$VENV" || die "'$BASE -m venv .venv' failed (see above): fix the cause it names, remove .venv and rerun"
  probe "$PY" && [ "$HASPIP" = 1 ] || die ".venv was created without pip: remove .venv, install python3-venv (as root: apt-get install python3-venv) and rerun"
fi

# --- ncslim and torch ----------------------------------------------------------------------
# Exit 0 when ncslim is installed in editable mode from this checkout and every requirement of
# pyproject.toml (with --dev: and of its dev extra) is met: then there is nothing to install.
INSTALLED='import json, pathlib, sys
from importlib import metadata
root, dev = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2] == "dev"
try:
    import tomllib
except ImportError:
    import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
dist = metadata.distribution("ncslim")
url = json.loads(dist.read_text("direct_url.json") or "{}")
assert url.get("url") == root.as_uri() and url.get("dir_info", {}).get("editable")
assert dist.version == project["version"]
for line in project["dependencies"] + (project["optional-dependencies"]["dev"] if dev else []):
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        assert req.specifier.contains(metadata.version(req.name), prereleases=True), line
assert (pathlib.Path(sys.prefix) / "bin" / "ncslim").exists()'

HAS_TORCH='import sys, torch
major, minor = torch.__version__.split("+")[0].split(".")[:2]
sys.exit(0 if (int(major), int(minor)) >= (2, 1) else 3)'

pip_install() { "$PY" -m pip install -q "$@"; }

newest_cpu_torch() {  # the newest torch X+cpu that pip's configured sources offer, or nothing
  "$PY" -m pip index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' \
    | tr ', ' '\n\n' | grep '+cpu$' | sort -V | tail -n 1 || true
}

install_torch() {
  local rc=0 args version log
  "$PY" -c "$HAS_TORCH" 2>/dev/null || rc=$?
  if [ "$rc" = 0 ]; then return 0; fi
  [ "$rc" = 3 ] && say "the torch in $KIND is older than 2.1: installing a newer one"
  if [ -n "${NCSLIM_TORCH:-}" ]; then
    read -r -a args <<<"$NCSLIM_TORCH"
    say "installing torch into $KIND: pip install $NCSLIM_TORCH"
    pip_install "${args[@]}" || die "pip install $NCSLIM_TORCH failed (see above): correct NCSLIM_TORCH and rerun"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "GPU found: installing PyPI's torch (a CUDA build) into $KIND"
    pip_install torch || die "pip install torch failed (see above): set NCSLIM_TORCH to the pip arguments of the torch you want and rerun"
  else
    log=$(mktemp "${TMPDIR:-/tmp}/ncslim-setup-torch.XXXXXX")
    version=$(newest_cpu_torch)
    if [ -n "$version" ]; then
      say "no GPU: installing torch==$version (CPU build) into $KIND"
      if pip_install "torch==$version" >>"$log" 2>&1; then rm -f "$log"; return 0; fi
    fi
    say "no GPU: installing a CPU build of torch from $CPU_INDEX into $KIND"
    if pip_install --retries 1 --timeout 15 torch --index-url "$CPU_INDEX" >>"$log" 2>&1; then
      rm -f "$log"; return 0
    fi
    die "no CPU build of torch could be installed (none among pip's configured sources, $CPU_INDEX failed; pip's output: $log): set NCSLIM_TORCH to pip arguments that get one (a torch wheel file, or \"torch --index-url URL\" of a reachable mirror) or install torch into $ENV yourself, and rerun"
  fi
}

if ! "$PY" -c "$INSTALLED" "$ROOT" "${DEV:-runtime}" >/dev/null 2>&1; then
  install_torch
  target=.
  [ -n "$DEV" ] && target=".[dev]"
  say "installing ncslim ($target, editable) into $KIND"
  pip_install -e "$target" || die "pip install -e '$target' failed (see above): fix what pip names and rerun"
fi
[ -x "$ENV/bin/ncslim" ] || die "$ENV/bin/ncslim is missing after the install: remove .venv (or reinstall with '$PY -m pip install -e .') and rerun"
echo "$ENV/bin" >&3
