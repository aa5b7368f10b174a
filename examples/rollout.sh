#!/usr/bin/env bash
# Move a live gallery from its current query model to a new one, backfill-free.
#
#   examples/rollout.sh STORE NEW_MODEL EVAL_DATA SHADOW_QUERIES [BACKFILL_IMAGES]
#
# Steps: check-compat (gated) -> upgrade --stage (register v2, no switch yet) -> shadow
# (the cut-over evidence, gated) -> upgrade (the switch) -> optional backfill -> verify.
# A failure after the switch rolls the query model back.
# Exits non-zero at the failing step and says which on stderr:
#   10 check-compat (gate failed or bad input)   11 upgrade refused (stage or switch)
#   12 shadow failed or flipped too many decisions (v1 still the query model)
#   13 backfill failed (rolled back)   14 verify failed (rolled back)   2 usage
#
# Tunables (environment): GALLERY (the CLI), GATES (check-compat gate options), TARGET_FAR
# (the FAR v2's thresholds are calibrated at; default: the FAR of the store's current query
# model's own threshold, so both query paths decide at the same operating point, else 1e-4),
# MAX_FLIP_RATE (share of shadow queries whose decision may flip for the worse: labelled
# queries ROOT/<identity>/<image> count lost correct matches and new wrong matches; a flat
# folder of unlabelled queries counts every changed decision), WORK (report folder).
set -uo pipefail

if [[ $# -lt 4 || $# -gt 5 ]]; then
    sed -n '2,4p' "$0" >&2
    exit 2
fi
STORE=$1 NEW_MODEL=$2 EVAL_DATA=$3 QUERIES=$4 IMAGES=${5:-}
GALLERY=${GALLERY:-gallery}
GATES=${GATES:---require-criterion}
MAX_FLIP_RATE=${MAX_FLIP_RATE:-0.05}
WORK=${WORK:-$(dirname "$STORE")/rollout-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$WORK" || { echo "rollout: cannot create $WORK" >&2; exit 2; }

fail() {  # fail CODE STEP MESSAGE
    echo "rollout: FAILED at step '$2': $3" >&2
    exit "$1"
}

rollback_and_fail() {
    echo "rollout: rolling back the query model of $STORE" >&2
    if ! $GALLERY rollback "$STORE" >&2; then
        echo "rollout: ROLLBACK ALSO FAILED: run '$GALLERY rollback $STORE' by hand" >&2
    fi
    fail "$@"
}

# The model the store queries with now: check-compat must compare against exactly this file.
OLD_MODEL=$($GALLERY info "$STORE" --json | python3 -c '
import json, sys
info = json.load(sys.stdin)
active = [m for m in info["models"] if m["version"] == info["active_model"]][0]
print(active["path"] or "")') || fail 2 "info" "cannot read $STORE"
[[ -n "$OLD_MODEL" && -f "$OLD_MODEL" ]] || fail 2 "info" "query model file of $STORE not found: '$OLD_MODEL'"
# The operating point: the FAR the query model's own threshold was calibrated at.
TARGET_FAR=${TARGET_FAR:-$($GALLERY threshold show "$STORE" --json | python3 -c '
import json, sys
shown = json.load(sys.stdin)
own = [p["far"] for p in shown["pairs"] if p["query"] == p["rows"] == shown["active_model"] and p["far"]]
print(own[0] if own else 1e-4)')} || fail 2 "info" "cannot read the thresholds of $STORE"

echo "rollout: 1/6 check-compat $OLD_MODEL -> $NEW_MODEL (thresholds at FAR $TARGET_FAR)" >&2
$GALLERY check-compat --old "$OLD_MODEL" --new "$NEW_MODEL" --data "$EVAL_DATA" \
    --out "$WORK/report.json" $GATES --old-to-new --target-far "$TARGET_FAR" >&2
rc=$?
[[ $rc -eq 0 ]] || fail 10 "check-compat" "exit $rc (1 = a gate failed, 2 = bad input); report: $WORK/report.json"

echo "rollout: 2/6 upgrade --stage (register, no switch)" >&2
$GALLERY upgrade "$STORE" --model "$NEW_MODEL" --report "$WORK/report.json" --stage --json > "$WORK/stage.json"
rc=$?
[[ $rc -eq 0 ]] || fail 11 "upgrade" "exit $rc; the store is unchanged"
read -r OLD NEW < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["from"], r["to"])' "$WORK/stage.json")

echo "rollout: 3/6 shadow queries ($OLD vs $NEW)" >&2
$GALLERY shadow "$STORE" --queries "$QUERIES" --old "$OLD" --new "$NEW" --out "$WORK/shadow.json" --json > /dev/null
rc=$?
[[ $rc -eq 0 ]] || fail 12 "shadow" "exit $rc; $OLD is still the query model"
python3 - "$WORK/shadow.json" "$MAX_FLIP_RATE" <<'EOF' >&2
import json, sys
report, limit = json.load(open(sys.argv[1])), float(sys.argv[2])
d, n = report["decisions"], max(1, report["queries"])
# Both paths are calibrated (uncalibrated pairs accept nothing), so these are real decision changes.
# Labelled queries gate on the flips that make an answer worse (a correct match lost, a wrong
# match made); an improvement is not a reason to stay on the old model. Unlabelled: every flip.
flips, kind = (d["regressed"], "regressed") if "regressed" in d else (d["changed"], "changed")
rate = flips / n
print(f"rollout: shadow: {d['changed']}/{report['queries']} decisions change"
      + (f" ({d['improved']} improved, {d['regressed']} regressed)" if "regressed" in d else "")
      + f"; gate on {kind}: {rate:.3f} (limit {limit}); top-k overlap {report['topk_overlap']['mean']:.3f}")
sys.exit(0 if rate <= limit else 1)
EOF
[[ $? -eq 0 ]] || fail 12 "shadow" "too many decisions flip (see $WORK/shadow.json); $OLD is still the query model"

echo "rollout: 4/6 upgrade (switch the query model to $NEW)" >&2
$GALLERY upgrade "$STORE" --model "$NEW_MODEL" --report "$WORK/report.json" --json > "$WORK/upgrade.json"
rc=$?
[[ $rc -eq 0 ]] || fail 11 "upgrade" "exit $rc; $OLD is still the query model"

if [[ -n "$IMAGES" ]]; then
    echo "rollout: 5/6 backfill from $IMAGES" >&2
    $GALLERY backfill "$STORE" --images "$IMAGES" --json > "$WORK/backfill.json"
    rc=$?
    # Resumable: rerunning `gallery backfill` continues a killed run where it stopped.
    [[ $rc -eq 0 ]] || rollback_and_fail 13 "backfill" "exit $rc (rerun to resume, or keep the rollback)"
else
    echo "rollout: 5/6 backfill skipped (no image root given)" >&2
fi

echo "rollout: 6/6 verify" >&2
$GALLERY verify "$STORE" --json > "$WORK/verify.json"
rc=$?
[[ $rc -eq 0 ]] || rollback_and_fail 14 "verify" "exit $rc (see $WORK/verify.json)"

echo "rollout: done; $STORE queries with $($GALLERY info "$STORE" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_model"])'); reports in $WORK" >&2
