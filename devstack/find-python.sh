#!/bin/sh
# Prints the path of a Python 3.13 interpreter (else 3.12) and exits 0, or exits 1.
# Looks under pyenv's versions first (these machines' default python3 is 3.11),
# then on PATH.
pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for version in 3.13 3.12; do
  for candidate in "$pyenv_root"/versions/"$version".*/bin/python3 "python$version"; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if "$path" -c "import sys; sys.exit(sys.version_info[:2] != ($(echo $version | tr . ,)))" 2>/dev/null; then
      echo "$path"
      exit 0
    fi
  done
done
exit 1
