# Shared helpers of the scripts in this folder (sourced, not run).

# The machine's own Debian mirror, read from its apt sources (deb822 or one-line format); empty when none.
debian_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } |
    grep -E '/debian/?$' | head -1 || true
}
