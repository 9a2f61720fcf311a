#!/usr/bin/env bash
# How often the "not worse" check of a retrain (routing.retrain_max_drop)
# would refuse a harmless one: a sample of Banking77 rows (../shared/datasets,
# sampled into a temporary folder, never into the repository) is trained
# once, then again with 1, 3 or 10 more of its other rows added, as a new
# training-file row or a few reviewer labels would. For each retrain it
# prints how far what calibration measured moved against the first model:
# held-out accuracy, the threshold's share answered, and the share the
# calibrated confidences would answer (what the check compares), and how
# many retrains the check refuses at retrain_max_drop.
#
#   bench/retrain_noise.sh            # this checkout's release build
#   BIN=/path/to/other/sopr bench/retrain_noise.sh   # another build, to compare
#
# Needs: python3. Env: ROWS (training rows, default 4000: 600 held out, above
# the 3,500 below which calibration is cross-fitted), RUNS (retrains per
# added size, default 8), TARGET (routing.target_accuracy, default 0.98),
# MAX_DROP (default 0.03), SEED (sampling, default 2026). About 3 s a model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/datasets/banking77/train.csv
[ -f "$DATA" ] || { echo "Banking77 is expected at $DATA" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/sopr
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS=${ROWS:-4000} RUNS=${RUNS:-8} TARGET=${TARGET:-0.98} MAX_DROP=${MAX_DROP:-0.03} SEED=${SEED:-2026}

python3 - "$DATA" "$WORK" "$ROWS" "$RUNS" "$SEED" <<'EOF'
import csv, random, sys
data, work, rows, runs, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
all_rows = list(csv.DictReader(open(data, newline='')))
label = 'intent' if 'intent' in all_rows[0] else 'category'
rng = random.Random(seed)
order = list(range(len(all_rows)))
rng.shuffle(order)
base, rest = order[:rows], order[rows:]
def write(name, ids):
    with open(f'{work}/{name}.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['text', 'intent'])
        for i in ids:
            w.writerow([all_rows[i]['text'], all_rows[i][label]])
write('base', base)
write('test', rest[:50])
for added in (1, 3, 10):
    for run in range(runs):
        write(f'plus{added}_{run}', base + rng.sample(rest[50:], added))
EOF

echo "sopr: $BIN"
echo "$ROWS training rows, $RUNS retrains each with 1, 3 and 10 rows added; target $TARGET, max drop $MAX_DROP"
for f in "$WORK"/base.csv "$WORK"/plus*.csv; do
  name=$(basename "$f" .csv)
  "$BIN" eval --train "$f" --test "$WORK/test.csv" --target-accuracy "$TARGET" --format json 2>/dev/null |
    python3 -c "import json, sys; c = json.load(sys.stdin)['calibration']; print('$name', json.dumps(c))"
done >"$WORK/calibrations.txt"

python3 - "$WORK/calibrations.txt" "$MAX_DROP" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, record = line.split(' ', 1)
    rows[name] = json.loads(record)
max_drop = float(sys.argv[2])
base = rows.pop('base')
def by_confidence(c):
    # Builds from before the estimate existed have only the threshold's share.
    v = c.get('coverage_by_confidence')
    return v if v is not None else (c.get('coverage') or 0.0)
measures = {
    'held-out accuracy': lambda c: c['holdout_accuracy'],
    "threshold's share answered": lambda c: c.get('coverage') or 0.0,
    "confidences' share answered": by_confidence,
}
print(f"first model: held-out {base['holdout_examples']} examples, accuracy {base['holdout_accuracy']:.4f}, "
      f"threshold's share {base.get('coverage') or 0:.4f}, confidences' share {by_confidence(base):.4f}")
print(f"{'change against the first model, points':42} {'added':>5} {'sd':>6} {'worst':>7}")
for label, measure in measures.items():
    for added in ('1', '3', '10', 'all'):
        changes = [100 * (measure(c) - measure(base)) for name, c in rows.items()
                   if added == 'all' or name.startswith(f'plus{added}_')]
        print(f"{label:42} {added:>5} {statistics.pstdev(changes):6.2f} {min(changes):7.2f}")
def refused(c):
    if c['holdout_accuracy'] < base['holdout_accuracy'] - max_drop:
        return True
    if c.get('threshold') is None and base.get('threshold') is not None:
        return True
    return by_confidence(c) < by_confidence(base) - max_drop
print(f"refused by the not-worse check: {sum(map(refused, rows.values()))} of {len(rows)}")
EOF
