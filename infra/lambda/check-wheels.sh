#!/usr/bin/env bash
# Checks, offline from the configured package index, that every pinned package of requirements.txt
# (and what it pulls in) has a binary wheel for the Lambda image's Python on both CPUs:
#   infra/lambda/check-wheels.sh            # Python 3.12, x86_64 and aarch64, glibc <= 2.34 (AL2023)
#   PYTHON_VERSION=3.13 infra/lambda/check-wheels.sh
# kiwipiepy_model is a data-only sdist: it is built into a wheel here first (any platform).
set -euo pipefail
cd "$(dirname "$0")/../.."
version="${PYTHON_VERSION:-3.12}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip wheel --quiet --no-deps -w "$work/local" "$(grep -i '^kiwipiepy_model==' requirements.txt)"
for arch in x86_64 aarch64; do
  platforms=()
  for tag in manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_34; do platforms+=(--platform "${tag}_${arch}"); done
  if pip download --quiet --only-binary=:all: --find-links "$work/local" --python-version "$version" \
      --implementation cp "${platforms[@]}" -r requirements.txt -d "$work/$arch" 2>"$work/$arch.log"; then
    echo "ok $arch: $(ls "$work/$arch" | wc -l) wheels for CPython $version"
  else
    echo "FAILED $arch: $(grep -m1 ERROR "$work/$arch.log")" >&2
    exit 1
  fi
done
