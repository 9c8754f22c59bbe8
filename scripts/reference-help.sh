#!/usr/bin/env bash
# Rewrites the `--help` block (the first ```text block) of every page under docs/reference/
# from the binary: README.md gets the top-level help, <command>.md that command's. The pages
# must say what the binary says; `readme::every_commands_reference_is_its_help` fails until
# this has been run after a change to the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet
bin=target/debug/pod-identity-webhook
for page in docs/reference/*.md; do
  name=$(basename "$page" .md)
  if [ "$name" = README ]; then args=(--help); else args=("$name" --help); fi
  # An empty environment: clap shows a flag's variable's value when it is set. Trailing
  # whitespace is dropped: the test compares without it, and editors strip it.
  HELP=$(env -i "$bin" "${args[@]}" | sed 's/[[:space:]]*$//') awk '
    !done && $0 == "```text" { print; print ENVIRON["HELP"]; skip = 1; next }
    skip && $0 == "```" { skip = 0; done = 1 }
    !skip { print }
  ' "$page" > "$page.new"
  mv "$page.new" "$page"
done
