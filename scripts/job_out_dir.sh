# Sourced by the scripts/*_job.sh demos. new_out_dir PATH prints PATH made absolute, or stops with one line on stderr
# when PATH exists and is not an empty folder (a job deletes nothing):
#   OUT_DIR=$(new_out_dir "${1:-$REPO/outputs/<job>}")     (under set -e a refusal ends the job)
new_out_dir() {
  local dir
  dir=$(realpath -m "$1")
  if [ -e "$dir" ] && { [ ! -d "$dir" ] || [ -n "$(ls -A "$dir")" ]; }; then
    echo "$0: $dir exists and is not an empty folder; give a new one (the job deletes nothing)" >&2
    return 1
  fi
  echo "$dir"
}
