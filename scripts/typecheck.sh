#!/usr/bin/env bash
# mypy over the installed layout. The repository's top-level folders install as
# subpackages of `mailbag` (pyproject.toml's package-dir); mypy reads folders, not
# install mappings, so it checks a tree of links that mirrors the wheel's layout.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tree="$root/build/typecheck"
rm -rf "$tree" && mkdir -p "$tree/mailbag"
for entry in mailbag/*; do ln -s "$root/$entry" "$tree/mailbag/"; done
for folder in broker workers publishers dlq harness examples; do ln -s "$root/$folder" "$tree/mailbag/$folder"; done
cd "$tree" && exec "${MYPY:-mypy}" --config-file "$root/pyproject.toml" -p mailbag
