#!/usr/bin/env bash
# A job longer than one device command (10 minutes): the first call starts COMMAND in its own process
# session, which outlives the command that started it as long as the machine stays warm (a next call
# within its idle time); every call then follows the job for at most SECONDS and prints its log's tail.
#   bash bench/detached.sh NAME SECONDS -- COMMAND [ARGS...]   # starts NAME once, then follows it
#   bash bench/detached.sh NAME SECONDS                        # follows NAME (a later device call)
#   bash bench/detached.sh NAME --stop                         # ends NAME and every process it started
# Exit status: the job's own once it has finished, 3 while it still runs, 2 for a usage error.
# Files: /tmp/detached/NAME.log (stdout and stderr), NAME.rc (written when the job ends), NAME.pid (the
# job's process group).
# Stop a job with --stop, never with `pkill -f PATTERN`: the pattern also matches the shell that runs
# pkill (its command line holds the pattern) and any job whose arguments mention it; that killed a
# pipeline's driver mid-run once (bench/results/h200_realtext/README.md, run 8).
set -u
usage="usage: bash bench/detached.sh NAME SECONDS [-- COMMAND [ARGS...]] | NAME --stop"
if [ $# -lt 2 ]; then echo "$usage" >&2; exit 2; fi
dir=${DETACHED_DIR:-/tmp/detached}
if [ "$2" = "--stop" ]; then
  [ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
  pid_file=$dir/$1.pid
  [ -f "$pid_file" ] || { echo "detached.sh: no job $1 was started here" >&2; exit 2; }
  if [ -f "$dir/$1.rc" ]; then echo "detached.sh: $1 had already ended"; exit 0; fi
  # the job runs in its own session, so its process group holds it and everything it started
  kill -TERM -- "-$(cat "$pid_file")" 2>/dev/null
  echo 143 > "$dir/$1.rc"  # as a shell reports a job ended by SIGTERM; followers see it ended
  echo "detached.sh: $1 stopped"
  exit 0
fi
if ! [[ $2 =~ ^[0-9]+$ ]] || { [ $# -gt 2 ] && [ "$3" != "--" ]; }; then
  echo "$usage" >&2
  exit 2
fi
name=$1 follow=$2
shift 2
mkdir -p "$dir"
log=$dir/$name.log rc=$dir/$name.rc
if [ $# -gt 0 ]; then
  shift  # --
  if [ -f "$dir/$name.started" ]; then
    echo "detached.sh: $name was started before; following it" >&2
  elif [ $# -eq 0 ]; then
    echo "usage: bash bench/detached.sh NAME SECONDS -- COMMAND [ARGS...] (no COMMAND after --)" >&2
    exit 2
  else
    touch "$dir/$name.started"
    # the exit status goes to NAME.rc through a temporary file, so a reader never sees half of it
    setsid nohup bash -c 'r=$1; shift; "$@" > "$0" 2>&1 < /dev/null; echo $? > "$r.tmp" && mv "$r.tmp" "$r"' \
      "$log" "$rc" "$@" > /dev/null 2>&1 &
    echo $! > "$dir/$name.pid"  # setsid execs in place: this pid leads the job's session and group
  fi
elif [ ! -f "$dir/$name.started" ]; then
  echo "detached.sh: no job $name was started here (start it with: bash bench/detached.sh $name SECONDS -- COMMAND)" >&2
  exit 2
fi
end=$((SECONDS + follow))
while [ ! -f "$rc" ] && [ $SECONDS -lt "$end" ]; do sleep 2; done
tail -n "${TAIL:-40}" "$log" 2>/dev/null
if [ -f "$rc" ]; then
  echo "detached.sh: $name finished with exit status $(cat "$rc")"
  exit "$(cat "$rc")"
fi
echo "detached.sh: $name still running after ${follow}s more; follow it with: bash bench/detached.sh $name SECONDS"
exit 3
