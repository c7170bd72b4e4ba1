#!/usr/bin/env bash
# Time the README's quick run the way a newcomer meets it: a fresh copy of the committed tree (HEAD), no Snakemake
# records, no cached data, the README's command. Prints wall and CPU seconds; with --record FILE it appends a dated
# section (machine, commit, numbers) to FILE, e.g. benchmarks/RESULTS.md.
#   bash benchmarks/time_quick.sh [--record benchmarks/RESULTS.md] [--repeat N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
record="" repeat=1
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    *) echo "time_quick.sh: unknown argument $1 (use --record FILE, --repeat N)" >&2; exit 2 ;;
  esac
done
rows=""
for i in $(seq "$repeat"); do
  work=$(mktemp -d)
  git -C "$root" archive HEAD | tar -x -C "$work"
  ( cd "$work" && CI=true /usr/bin/time -f "%e %U %S" -o time.txt \
      snakemake --cores all --config overlay=workflow/quick.yaml > log.txt 2>&1 ) \
    || { echo "quick run failed; log: $work/log.txt" >&2; exit 1; }
  read -r wall user sys < "$work/time.txt"
  cpu=$(python3 -c "print(round($user + $sys, 1))")
  echo "run $i: wall ${wall} s, CPU ${cpu} s (user + sys, all processes)"
  rows+="| $i | ${wall} | ${cpu} |"$'\n'
  rm -rf "$work"
done
if [ -n "$record" ]; then
  {
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — quick run (README), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo
    echo "- commit \`$(git -C "$root" rev-parse --short HEAD)\`, command: \`bash benchmarks/time_quick.sh --repeat $repeat\`"
    echo "  (a fresh copy of HEAD, then \`snakemake --cores all --config overlay=workflow/quick.yaml\`, CI=true)"
    echo
    echo "| run | wall s | CPU s |"
    echo "|---|---|---|"
    printf '%s' "$rows"
  } >> "$record"
  echo "recorded in $record"
fi
