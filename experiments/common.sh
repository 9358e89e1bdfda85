# What experiments/rerun-cpu.sh and experiments/peers.sh share (sourced, from the repository root): the CLI, the
# results folder, and how a part that writes an accuracy table runs:
#   FORCE=1       rerun a part whose JSON exists already (otherwise it is skipped);
#   UPDATE="M .." rerun only these methods of each accuracy table that lists them, into the existing JSON
#                 (`bench accuracy --update`), after a change to those methods alone: e.g. UPDATE="source auto"
#                 once `auto`'s default changed (source again, so the cost ratios stay within one run).
D=${D:-.venv/bin/driftseg}
R=experiments/results

done_already() { [ -z "${FORCE:-}" ] && [ -f "$1" ] && echo "== $1 exists: skipped (FORCE=1 reruns it)"; }

accuracy_part() {  # $1: output JSON, $2: the other options of `bench accuracy`, then the methods
    local out=$1 options=$2 redo=() m
    shift 2
    if [ -n "${UPDATE:-}" ] && [ -f "$out" ]; then
        for m in $UPDATE; do [[ " $* " == *" $m "* ]] && redo+=("$m"); done
        if [ ${#redo[@]} -eq 0 ]; then echo "== $out lists none of $UPDATE: left as it is"; return; fi
        $D bench accuracy $options --methods "${redo[@]}" --update --out "$out"
    else
        done_already "$out" || $D bench accuracy $options --methods "$@" --out "$out"
    fi
}
