#!/usr/bin/env bash
# The short real demo (run by `bash setup.sh`; ~3-5 minutes on a 2-core CPU):
# glyph identities -> v1 model -> store enrolled with v1 -> v2 trained with MixBCT ->
# compatibility check -> upgrade (when `gallery upgrade` exists) -> search.
# Everything is written under ${DEMO_DIR:-runs/demo}; rerunning starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GALLERY:-.venv/bin/gallery}
D=${DEMO_DIR:-runs/demo}
rm -rf "$D" && mkdir -p "$D"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
COMMON=(--arch small --dim 64 --image-size 32 --batch-size 64 --lr 0.1 --device cpu --seed 0)

say "1. glyph identities: characters as identities, CJK fonts as appearance (ukai + IPAMincho held out for eval)"
$G data glyphs --out "$D/data" --identities 150 --per-identity 12 --eval-per-identity 6 \
  --image-size 32 --scenarios open-class --quiet

say "2. v1: a softmax model trained on the 'old' identities"
$G train --data "$D/data/open-class/old.h5" "${COMMON[@]}" --head softmax --epochs 8 --out "$D/v1.pt"

say "3. a gallery store enrolled with v1: one image per eval identity; the rest are queries"
mkdir -p "$D/enrol" "$D/queries"
for dir in "$D"/data/open-class/eval/*/; do
  id=$(basename "$dir")
  mkdir -p "$D/enrol/$id" "$D/queries/$id"
  files=("$dir"*.png)
  cp "${files[0]}" "$D/enrol/$id/"
  cp "${files[@]:1}" "$D/queries/$id/"
done
$G init "$D/store.h5" --model "$D/v1.pt" --version v1
$G enroll "$D/store.h5" --images "$D/enrol"
$G info "$D/store.h5"

say "4. v2 trained with MixBCT on the 'new' identities, compatible with v1"
$G train-compatible --method mixbct --old "$D/v1.pt" --data "$D/data/open-class/new.h5" \
  "${COMMON[@]}" --head arcface --epochs 8 --out "$D/v2.pt"

say "5. compatibility check: may v2 queries search the v1 gallery? (rank-1 on unseen identities)"
$G train --data "$D/data/open-class/new.h5" "${COMMON[@]}" --head arcface --epochs 8 --out "$D/v2-independent.pt" --json > "$D/v2-independent.json"
set +e
$G check-compat --old "$D/v1.pt" --new "$D/v2.pt" --reference "$D/v2-independent.pt" \
  --data "$D/data/open-class/eval" --json "$D/check.json" --plot "$D/check.png" --require-criterion
check_rc=$?
set -e
echo "check-compat exit code: $check_rc (0 = every requested gate passed)"
echo "the same check for an independently trained v2 (no compatibility training):"
$G check-compat --old "$D/v1.pt" --new "$D/v2-independent.pt" --data "$D/data/open-class/eval" \
  --json "$D/check-independent.json" || true

# six queries of six different identities, searched together
mkdir -p "$D/some-queries"
find "$D/queries" -name '001.png' | sort | head -n 6 | while read -r q; do
  cp "$q" "$D/some-queries/$(basename "$(dirname "$q")").png"
done
if ! $G upgrade --help >/dev/null 2>&1; then
  say "6. (gallery upgrade is not available: stopping before the rollout)"
  say "7. search the v1 gallery with v1 queries (file name = true identity)"
elif [ "$check_rc" != 0 ]; then
  say "6. the compatibility gate failed: no upgrade, v1 stays the query model"
  say "7. search the v1 gallery with v1 queries (file name = true identity)"
else
  say "6. upgrade: v2 becomes the query model, admitted by check.json; the v1 gallery is not re-encoded"
  $G upgrade "$D/store.h5" --model "$D/v2.pt" --report "$D/check.json"
  say "7. search the v1 gallery with v2 queries (file name = true identity; open-set threshold from the check)"
fi
$G search "$D/store.h5" --image "$D/some-queries" -k 3
echo "(hits below the calibrated FAR-1e-4 threshold are rejected; the same search without open-set rejection:)"
$G search "$D/store.h5" --image "$D/some-queries" -k 3 --threshold 0
say "done: outputs in $D (check.json, check.png, store.h5)"
