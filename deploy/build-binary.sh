#!/bin/sh
# The one build command of the image's binary, shared by the build stage of
# deploy/Dockerfile and by CI (testkit/src/image.rs builds the image's final
# stage over the binary this made): a static release build (glibc with
# crt-static, no musl target needed), debug info stripped (symbols kept for
# backtraces). Run from the repository root; prints the binary's path.
#
#   deploy/build-binary.sh x86_64-unknown-linux-gnu
set -eu
target="${1:?usage: deploy/build-binary.sh RUST_TARGET (e.g. x86_64-unknown-linux-gnu)}"
RUSTFLAGS="-C target-feature=+crt-static" \
CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --target "$target" --bin kubepulse >&2
echo "target/$target/release/kubepulse"
