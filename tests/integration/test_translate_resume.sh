# Resuming a translation run and its report (issue 19): a run of 40 steps
# checkpointed at step 20, resumed from there with --resume, ends with the
# uninterrupted run's model and optimizer state byte for byte; --report
# counts exactly what was trained (each MoE layer routes every real token
# to k experts: rows routed = k x the source tokens in the encoder, k x the
# target tokens in the decoder; a 20-step run and the resumed 20 steps add
# up to the 40-step run's tokens); --resume refuses a contradicting shape,
# a folder without optimizer state and remote experts.
K=40
mt_tiny $K
MT="$MT --log-level warn --log-every 1000"
M=model.safetensors
O=optim.safetensors
"$BIN/moe-worker" $MT --checkpoint-dir "$WORK/a" --checkpoint-every 20 --report "$WORK/a.json" \
    >"$WORK/a.out" 2>&1 || fail "40 steps: $(tail -n 3 "$WORK/a.out")"
"$BIN/moe-worker" $MT --steps 20 --final-model "$WORK/c" --report "$WORK/c.json" \
    >"$WORK/c.out" 2>&1 || fail "20 steps: $(tail -n 3 "$WORK/c.out")"
"$BIN/moe-worker" $MT --resume "$WORK/a/step-00000020" --checkpoint-dir "$WORK/b" \
    --report "$WORK/b.json" >"$WORK/b.out" 2>&1 || fail "resumed: $(tail -n 3 "$WORK/b.out")"
grep -q "^trained 20 steps" "$WORK/b.out" || fail "the resumed run: $(tail -n 2 "$WORK/b.out")"
for f in $M $O; do
    cmp "$WORK/a/step-00000040/$f" "$WORK/b/step-00000040/$f" ||
        fail "resumed at step 20: $f of step 40 differs from the uninterrupted run's"
done
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/a/step-00000020/$M" "$WORK/c/$M" exact \
    >/dev/null || fail "20 steps differ from the checkpoint of step 20 (their configurations say 20 and 40 steps)"
echo "  ok: resumed at step 20 from the checkpoint: model and optimizer state of step 40 byte for byte"

/usr/bin/python3 - "$WORK/a.json" "$WORK/b.json" "$WORK/c.json" <<'PY' || fail "the reports"
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:4])
assert (a["steps"], a["steps_this_run"]) == (40, 40), a
assert (b["steps"], b["steps_this_run"]) == (40, 20), b
assert (c["steps"], c["steps_this_run"]) == (20, 20), c
for r in (a, b, c):
    assert r["task"] == "translate" and r["moe_layers"] == 2 and r["n_experts"] == 4, r
    assert sum(r["rows_routed"]["encoder"]) == r["k"] * r["source_tokens"], r
    assert sum(r["rows_routed"]["decoder"]) == r["k"] * r["target_tokens"], r
    assert r["valid_ppl"] is None and r["train_ppl"] > 1 and r["tokens_per_sec"] > 0, r
    assert r["params_experts"] == 8 * (2 * 16 * 24 + 16 + 24), r
    assert (r["rank"], r["workers"], r["recoveries"], r["experts"]) == (0, 1, 0, "local"), r
for side in ("encoder", "decoder"):
    assert [x + y for x, y in zip(c["rows_routed"][side], b["rows_routed"][side])] == \
        a["rows_routed"][side], side
assert c["source_tokens"] + b["source_tokens"] == a["source_tokens"]
assert c["target_tokens"] + b["target_tokens"] == a["target_tokens"]
print("  ok: reports: rows routed = k x tokens in each layer (%d + %d), 20 + 20 steps = 40"
      % (a["source_tokens"], a["target_tokens"]))
PY

"$BIN/moe-worker" $MT --resume "$WORK/a/step-00000020" --d-model 32 --final-model "$WORK/x" \
    >"$WORK/out.txt" 2>&1
[ $? = 2 ] && grep -q -- "--d-model 32 contradicts .*step-00000020/model.safetensors" "$WORK/out.txt" ||
    fail "--resume with another --d-model: $(cat "$WORK/out.txt")"
mkdir "$WORK/noopt"
cp "$WORK/a/step-00000020/$M" "$WORK/noopt/"
expect_fail "--resume without optimizer state" "noopt/optim.safetensors" \
    "$BIN/moe-worker" $MT --resume "$WORK/noopt" --final-model "$WORK/x"
"$BIN/moe-worker" $MT --resume "$WORK/a" --experts remote --servers ipc:///nonexistent \
    --final-model "$WORK/x" >"$WORK/out.txt" 2>&1
[ $? = 2 ] && grep -q "the coordinator resumes the cluster" "$WORK/out.txt" ||
    fail "--resume with remote experts: $(cat "$WORK/out.txt")"
[ ! -e "$WORK/x" ] || fail "a refused run wrote a model"
echo "  ok: --resume refuses another shape (exit 2), a folder without optimizer state, remote experts"
