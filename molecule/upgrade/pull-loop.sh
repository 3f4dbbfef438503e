#!/bin/bash
# Pulls from the registry through the gateway, as a runtime node does, until
# RUN/stop appears: podman pull (then the image is removed, so the next pull
# fetches every blob again) and skopeo copy into a fresh directory, in turn,
# over the references given, with the node's own client certificate
# (roles/registry_client) and no retries of our own.
#   usage: pull-loop.sh RUN REF...
# RUN/pulls.log gets one line per pull: start end exit-status kind ref;
# RUN/failures.log the output of every failed one; RUN/done "total failed".
set -u
run=$1
shift
refs=("$@")
mkdir -p "$run"
cd "$run" || exit 1
podman=(podman --storage-driver vfs --root "$run/storage" --runroot "$run/runroot")
n=0
failed=0
while [ ! -e stop ]; do
  ref=${refs[n % ${#refs[@]}]}
  start=$(date +%s.%N)
  if [ $((n % 2)) -eq 0 ]; then
    kind=podman
    out=$(timeout 120 "${podman[@]}" pull -q "$ref" 2>&1)
    rc=$?
    "${podman[@]}" rmi -f "$ref" >/dev/null 2>&1
  else
    kind=skopeo
    rm -rf copy
    out=$(timeout 120 skopeo copy -q "docker://$ref" dir:copy 2>&1)
    rc=$?
  fi
  n=$((n + 1))
  printf '%s %s %s %s %s\n' "$start" "$(date +%s.%N)" "$rc" "$kind" "$ref" >>pulls.log
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    printf '%s %s %s: %s\n' "$start" "$kind" "$ref" "$out" >>failures.log
  fi
  sleep 1
done
echo "$n $failed" >done
