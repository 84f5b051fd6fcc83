#!/usr/bin/env bash
# Demo (first cut): private PostgreSQL and Redis, a build, and the codec tool decoding sample
# merchant messages from the contract's test vectors. The full demo will replace this.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
. scripts/services.sh
trap services_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

services_start

echo "==> building"
cargo build -q --workspace

vectors=codec/tests/data/merchant-h2h-v1.json
# The hex of the vector whose "name" is $1 (the line after it in the file).
vector_hex() {
  awk -v want="\"name\": \"$1\"" '
    index($0, want) { found = 1; next }
    found && /"hex":/ { gsub(/.*"hex": *"|".*/, ""); print; exit }
  ' "$vectors"
}

for name in "purchase request" "purchase approved"; do
  hex="$(vector_hex "$name")"
  if [ -z "$hex" ]; then
    echo "no vector named '$name' in $vectors" >&2
    exit 1
  fi
  echo
  echo "==> $name"
  echo "    $hex"
  cargo run -q -p switch --bin switchyard -- iso8583 decode --dialect merchant-h2h-v1 "$hex"
done
