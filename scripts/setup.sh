#!/usr/bin/env bash
# One-time machine set-up for dtrain on Debian/Ubuntu: the .NET SDK check and, only where the system
# libstdc++ is older than GCC 13 (Debian 12, Ubuntu 22.04), the tools of the TorchSharp compatibility step
# (g++ and patchelf; see eng/TorchCompat.targets), a C compiler (gcc: the build compiles the tcp+tls record cipher,
# eng/native/aegis128x2.c), and tcmalloc (libtcmalloc-minimal4), which dtrain's processes
# preload because it makes recurrent training ~1.5x faster (src/Shared/Runtime/NativeAllocator.cs). Safe to run again.
set -euo pipefail
need=()
if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK is required (https://dotnet.microsoft.com/download); install it and run again" >&2
  exit 1
fi
libstdcxx="$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ && !found {print $NF; found = 1}')"
if [[ -n "$libstdcxx" ]] && ! grep -q "GLIBCXX_3.4.32" "$libstdcxx"; then
  command -v patchelf >/dev/null 2>&1 || need+=(patchelf)
  command -v g++ >/dev/null 2>&1 || need+=(g++)
fi
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if ! ldconfig -p 2>/dev/null | grep "libtcmalloc_minimal\.so\.4" >/dev/null; then
  need+=(libtcmalloc-minimal4)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "setup: ok"
