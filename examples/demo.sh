#!/usr/bin/env bash
# The short real demo (run by `bash setup.sh`; ~3 minutes on 2 free CPU cores):
# glyph identities -> v1 model -> store enrolled with v1, v1's threshold calibrated ->
# v2 trained with MixBCT -> compatibility check -> examples/rollout.sh (check, stage,
# shadow, upgrade, backfill, verify) -> v1 and v2 decisions side by side -> search.
# README's quick tour is exactly these commands.
# Everything is written under ${DEMO_DIR:-runs/demo}; rerunning starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GALLERY:-.venv/bin/gallery}
D=${DEMO_DIR:-runs/demo}
rm -rf "$D" && mkdir -p "$D"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
COMMON=(--config examples/demo.toml)  # small CNN, dim 64, 32x32 grayscale, batch 32, 1 thread, seed 0

say "1. glyph identities: characters as identities, six sans-serif CJK fonts as appearance (one held out for eval)"
$G data glyphs --out "$D/data" --identities 400 --eval-fraction 0.075 --per-identity 8 \
  --eval-per-identity 6 --faces "Droid Sans Fallback,IPAGothic,Noto Sans CJK,Noto Sans CJK Bold,WenQuanYi Micro Hei,WenQuanYi Zen Hei" \
  --holdout-faces "WenQuanYi Micro Hei" --image-size 32 --scenarios open-class --quiet

say "2. v1: a softmax model trained on the 'old' identities"
$G train --data "$D/data/open-class/old.h5" "${COMMON[@]}" --head softmax --epochs 8 --out "$D/v1.pt"

say "3. a gallery store enrolled with v1: two images per eval identity; the other four are queries"
mkdir -p "$D/enrol" "$D/queries"
for dir in "$D"/data/open-class/eval/*/; do
  id=$(basename "$dir")
  mkdir -p "$D/enrol/$id" "$D/queries/$id"
  files=("$dir"*.png)
  cp "${files[@]:0:2}" "$D/enrol/$id/"
  cp "${files[@]:2}" "$D/queries/$id/"
done
$G init "$D/store.h5" --model "$D/v1.pt" --model-version v1
$G enroll "$D/store.h5" --images "$D/enrol"
$G threshold calibrate "$D/store.h5" --data "$D/data/open-class/eval"   # v1's own threshold
$G info "$D/store.h5"

say "4. v2 trained with MixBCT on the 'new' identities, compatible with v1"
# --mix-ratio 0.6 (default 0.3): more of each batch is v1's features, so v2 queries against the
# v1 rows lose fewer of v1's right answers (rollout.sh's shadow gate: at most 5% regressed)
$G train-compatible --method mixbct --old "$D/v1.pt" --data "$D/data/open-class/new.h5" \
  "${COMMON[@]}" --head arcface --epochs 12 --mix-ratio 0.6 --out "$D/v2.pt"

say "5. compatibility check: may v2 queries search the v1 gallery? (rank-1 on unseen identities)"
$G train --data "$D/data/open-class/new.h5" "${COMMON[@]}" --head arcface --epochs 12 --out "$D/v2-independent.pt" --json > "$D/v2-independent.json"
set +e
$G check-compat --old "$D/v1.pt" --new "$D/v2.pt" --reference "$D/v2-independent.pt" \
  --data "$D/data/open-class/eval" --out "$D/check.json" --plot "$D/check.png" --require-criterion
check_rc=$?
set -e
echo "check-compat exit code: $check_rc (0 = every requested gate passed)"
echo "the same check for an independently trained v2 (no compatibility training):"
$G check-compat --old "$D/v1.pt" --new "$D/v2-independent.pt" --data "$D/data/open-class/eval" \
  --out "$D/check-independent.json" || true

# six queries of six different identities, searched together
mkdir -p "$D/some-queries"
find "$D/queries" -name '002.png' | sort | head -n 6 | while read -r q; do
  cp "$q" "$D/some-queries/$(basename "$(dirname "$q")").png"
done
if [ "$check_rc" != 0 ]; then
  say "6. the compatibility gate failed: no rollout, v1 stays the query model"
else
  say "6. examples/rollout.sh: check-compat, upgrade --stage, shadow (gated), upgrade, backfill from enrol/, verify"
  GALLERY="$G" WORK="$D/rollout" bash examples/rollout.sh "$D/store.h5" "$D/v2.pt" "$D/data/open-class/eval" \
    "$D/queries" "$D/enrol" || echo "rollout.sh stopped (exit $?); the store is as the failing step left it"
  say "7. the same $(find "$D/queries" -name '*.png' | wc -l) queries through v1 (before) and v2 (after): decisions side by side"
  $G shadow "$D/store.h5" --queries "$D/queries" --old v1 --new v2 --show 6 --out "$D/decisions.json"
fi
say "8. search the gallery with the query model (file name = true identity; hits below their pair's threshold are rejected)"
$G search "$D/store.h5" --image "$D/some-queries" -k 3
say "done: outputs in $D (check.json, check.png, store.h5, rollout/)"
