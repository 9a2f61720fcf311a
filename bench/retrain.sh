#!/usr/bin/env bash
# What a retrain while serving costs the traffic: a release build of sopr on a
# throw-away SQLite file, trained on Banking77 (../shared/datasets, copied to
# a temporary folder, never into the repository) with a retrain check every
# minute. One client sends messages back to back over a kept-alive
# connection; one row is added to the training file, so the next check
# retrains. It prints latency and throughput while the model trained
# (from the log's "retraining" line to "router model replaced") and outside
# that window. Sends traffic to 127.0.0.1 only.
#
#   bench/retrain.sh
#
# Needs: python3. Env: PORT (default 18098); SOPR_ROUTING__RETRAIN_THREADS
# (default 1) to compare how many threads the retrain may use.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18098}
DATA=../shared/datasets/banking77/train.csv
[ -f "$DATA" ] || { echo "Banking77 is expected at $DATA" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/sopr
WORK=$(mktemp -d)
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cp "$DATA" "$WORK/data.csv"
export SOPR_DATABASE__URL="sqlite://$WORK/bench.db" SOPR_BOOTSTRAP__DEMO_TENANT= \
  SOPR_ROUTING__TRAINING_DATA="[\"$WORK/data.csv\"]" SOPR_ROUTING__RETRAIN_EVERY_MINUTES=1 \
  SOPR_LOG__LEVEL=info SOPR_LOG__FORMAT=json
KEY=$($BIN keys create --tenant bench 2>/dev/null)
$BIN serve --listen "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
PID=$!
echo "training the first model (Banking77 + demo SOPs)..."
for _ in $(seq 1 300); do curl -sf "127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "127.0.0.1:$PORT/readyz" >/dev/null || { tail "$WORK/serve.log" >&2; exit 1; }
echo "my card is nowhere to be seen yet,card_arrival" >>"$WORK/data.csv"
echo "sopr $(git rev-parse --short HEAD 2>/dev/null || echo '?') | $(nproc) cores | retrain_threads ${SOPR_ROUTING__RETRAIN_THREADS:-1} | sending for 90 s; the next check retrains"

python3 - "$PORT" "$KEY" "$WORK/serve.log" <<'EOF'
import datetime, http.client, json, sys, time
port, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
texts = ["my card has not arrived", "what is the exchange rate for euros",
         "I was charged twice for the same thing", "how do I top up by bank transfer"]
samples, end, i = [], time.time() + 90, 0
while time.time() < end:
    body = json.dumps({"customer": {"id": f"c{i % 500}"}, "text": f"{texts[i % 4]} #{i}"})
    t0 = time.time()
    conn.request("POST", "/v1/messages", body,
                 {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    resp = conn.getresponse(); resp.read()
    samples.append((t0, (time.time() - t0) * 1000, resp.status))
    i += 1

def at(line):
    return datetime.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
start = stop = None
for line in open(log):
    if "the router's training data changed; retraining" in line: start = at(line)
    if "router model replaced" in line: stop = at(line)
if start is None or stop is None:
    sys.exit("no retrain happened in the window; see the log")
def show(name, xs, seconds):
    xs = sorted(x[1] for x in xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    print(f"{name:17s} {len(xs) / seconds:6.0f} req/s  p50 {q(.5):6.2f} ms  p90 {q(.9):6.2f} ms  "
          f"p99 {q(.99):6.2f} ms  max {xs[-1]:7.2f} ms  ({len(xs)} requests)")
inside = [s for s in samples if start <= s[0] <= stop]
outside = [s for s in samples if not start <= s[0] <= stop]
errors = sum(1 for s in samples if s[2] >= 400)
print(f"retrain took {stop - start:.1f} s; {errors} errors")
show("while training", inside, stop - start)
show("otherwise", outside, samples[-1][0] - samples[0][0] - (stop - start))
EOF
