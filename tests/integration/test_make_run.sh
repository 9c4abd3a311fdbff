# The README's first command, `make run`, in a short form: the same target,
# launcher and default configuration (deploy/default.ini, the bundled
# WikiText-2, a coordinator, 2 expert servers and a worker on free ports),
# with few steps and a short validation. It must end with the validation
# perplexity, exit 0, and leave a committed checkpoint and a report.
top=$(cd "$IT_DIR/../.." && pwd)
out="$WORK/make-run.out"
make --no-print-directory -C "$top" run SANITIZE="${MOE_SANITIZE:-}" RUN_DIR="$WORK/run" \
    RUN_OPTS="--steps 12 --warmup 5 --valid-max-tokens 2000 --log-every 4" >"$out" 2>&1 ||
    fail "make run failed: $(tail -n 5 "$out")"
grep -Eq "^validation perplexity [0-9.]+ after 12 steps" "$out" ||
    fail "make run printed no validation perplexity: $(tail -n 5 "$out")"
grep -q "dashboard at http://127.0.0.1:" "$out" || fail "make run did not print the dashboard address"
[ -f "$WORK/run/checkpoints/step-00000012/manifest.json" ] || fail "make run committed no final checkpoint"
"$BIN/moectl" verify "$WORK/run/checkpoints" >/dev/null ||
    fail "the checkpoint of make run does not verify"
/usr/bin/python3 - "$WORK/run/report.json" <<'PY' || fail "the report of make run is wrong"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["steps"] == 12, r["steps"]
assert r["valid_ppl"] > 1, r["valid_ppl"]
PY
grep -q "^Sampled from the model just trained" "$out" || fail "make run printed no sample"
[ "$(sed -n '/^Sampled from/,/^Use it:/p' "$out" | grep -c '^    [^ ]')" -ge 1 ] ||
    fail "make run sampled no text: $(tail -n 12 "$out")"
grep -q "moectl eval .*checkpoints --corpus" "$out" || fail "make run did not print how to evaluate"
echo "  ok: make run (12 steps): $(grep '^validation perplexity' "$out")"
