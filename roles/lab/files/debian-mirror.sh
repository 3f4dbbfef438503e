#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt already uses (one-line or deb822
# sources), so the lab and the bootstrap fetch from the same place. Prints
# nothing when no Debian source is configured.
set -euo pipefail
{
  grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
    awk '$0 !~ /security/ && $0 ~ /debian/ {
           for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit }
         }' || true
  grep -hsiE '^URIs:' /etc/apt/sources.list.d/*.sources |
    awk '$2 !~ /security/ && $2 ~ /debian/ { print $2; exit }' || true
} | head -n 1
