# moe-worker --task translate and moectl translate (issue 19) on a small
# cut of the bundled English-Spanish pairs: a tiny encoder-decoder trains in
# about a second, prints its validation perplexity and writes its model
# with the documented tensor names and shapes, which PyTorch loads strictly
# and evaluates to the same validation loss (1e-4 relative); the same run
# twice gives the same bytes; moectl translate writes one line per input line (an empty
# line gives an empty line), the same lines every run, greedy at --beam 1;
# bad corpora (different line counts, an empty line, a line over
# --max-len) are refused with one sentence naming the file and line, exit
# 1, nothing written.
BI="$IT_DIR/../../data/bible-en-es"
head -n 300 "$BI/train.en" >"$WORK/train.en"
head -n 300 "$BI/train.es" >"$WORK/train.es"
head -n 40 "$BI/valid.en" >"$WORK/valid.en"
head -n 40 "$BI/valid.es" >"$WORK/valid.es"
MT="--task translate --src-train $WORK/train.en --tgt-train $WORK/train.es \
--src-valid $WORK/valid.en --tgt-valid $WORK/valid.es --d-model 16 --d-hidden 24 \
--n-experts 4 --k 2 --batch 8 --steps 24 --warmup 5 --lr 0.01 --threads 1 --log-every 1000 \
--src-vocab-max 500 --tgt-vocab-max 600 --max-len 150 --log-level warn"
# shellcheck disable=SC2086
"$BIN/moe-worker" $MT --final-model "$WORK/m1" >"$WORK/run1.txt" 2>&1 ||
    fail "training failed: $(cat "$WORK/run1.txt")"
grep -Eq "^validation perplexity [0-9.]+ after 24 steps \(40 pairs, [0-9]+ target tokens; cross-entropy [0-9.]+ per token\)" \
    "$WORK/run1.txt" || fail "no validation perplexity: $(cat "$WORK/run1.txt")"
# shellcheck disable=SC2086
"$BIN/moe-worker" $MT --final-model "$WORK/m2" >"$WORK/run2.txt" 2>&1 || fail "second run failed"
cmp "$WORK/m1/model.safetensors" "$WORK/m2/model.safetensors" ||
    fail "two runs with the same flags wrote different models"
echo "  ok: trained, $(grep '^validation' "$WORK/run1.txt"); a second run: the same bytes"

# PyTorch (float64, every pair on its own) agrees on the validation loss
/usr/bin/python3 -c "import torch" 2>/dev/null ||
    fail "PyTorch is not installed (deploy/install-deps.sh --test installs python3-torch)"
ours=$(sed -n 's/.*cross-entropy \([0-9.]*\) per token.*/\1/p' "$WORK/run1.txt")
theirs=$(/usr/bin/python3 "$IT_DIR/torch_translate.py" "$WORK/m1/model.safetensors" \
    "$WORK/valid.en" "$WORK/valid.es") || fail "torch_translate.py failed"
awk -v a="$ours" -v b="$theirs" 'BEGIN { d = (a - b) / b; exit !(a != "" && d < 1e-4 && d > -1e-4) }' ||
    fail "validation cross-entropy: moe-worker $ours, PyTorch $theirs"
echo "  ok: PyTorch's validation cross-entropy $theirs, moe-worker's $ours (1e-4 relative)"

/usr/bin/python3 - "$WORK/m1/model.safetensors" <<'PY' || fail "tensor names or shapes"
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
meta = h.pop("__metadata__")
assert meta["format"] == "moe-translate-1", meta["format"]
assert "[translate]" in meta["config"] and "max_len = 150" in meta["config"], meta["config"]
vs, vt = meta["src_vocab"].split("\n"), meta["tgt_vocab"].split("\n")
assert vs[:2] == ["<unk>", "<eos>"] and vt[:2] == ["<unk>", "<eos>"]
Vs, Vt = len([w for w in vs if w]), len([w for w in vt if w])
D, H, E = 16, 24, 4
want = {"encoder.embedding.weight": [Vs, D], "decoder.embedding.weight": [Vt, D],
        "decoder.attention.query.weight": [D, D], "decoder.attention.key.weight": [D, D],
        "decoder.attention.bias": [D], "decoder.attention.v": [D],
        "decoder.softmax.weight": [Vt, D], "decoder.softmax.bias": [Vt]}
for side, n in (("encoder", 3), ("decoder", 2)):
    for l in range(1, n + 1):
        want[f"{side}.lstm{l}.weight_ih_l0"] = [4 * D, D]
        want[f"{side}.lstm{l}.weight_hh_l0"] = [4 * D, D]
        want[f"{side}.lstm{l}.bias_ih_l0"] = [4 * D]
        want[f"{side}.lstm{l}.bias_hh_l0"] = [4 * D]
    want[f"{side}.moe.w_gate"] = [D, E]
    want[f"{side}.moe.w_noise"] = [D, E]
    for e in range(E):
        want[f"{side}.moe.experts.{e}.w1.weight"] = [H, D]
        want[f"{side}.moe.experts.{e}.w1.bias"] = [H]
        want[f"{side}.moe.experts.{e}.w2.weight"] = [D, H]
        want[f"{side}.moe.experts.{e}.w2.bias"] = [D]
got = {k: v["shape"] for k, v in h.items()}
assert got == want, (sorted(set(got) ^ set(want)), [k for k in want if got.get(k) != want[k]])
print("  ok: %d tensors with the documented names and shapes" % len(got))
PY

# translation: one line out per line in, the same every run
{ head -n 3 "$BI/test.en"; echo; sed -n 4,6p "$BI/test.en"; } >"$WORK/in.txt"
for k in 1 3; do
    "$BIN/moectl" translate "$WORK/m1" --input "$WORK/in.txt" --beam $k --threads 1 \
        >"$WORK/out$k.txt" 2>"$WORK/err$k.txt" || fail "moectl translate --beam $k: $(cat "$WORK/err$k.txt")"
    [ "$(wc -l <"$WORK/out$k.txt")" = 7 ] || fail "--beam $k: $(wc -l <"$WORK/out$k.txt") lines for 7"
    [ -z "$(sed -n 4p "$WORK/out$k.txt")" ] || fail "--beam $k: the empty line gave text"
    "$BIN/moectl" translate "$WORK/m1" --input "$WORK/in.txt" --beam $k --threads 1 2>/dev/null |
        cmp -s - "$WORK/out$k.txt" || fail "--beam $k: two runs translate differently"
done
"$BIN/moectl" translate "$WORK/m1" --input "$WORK/in.txt" --beam 1 --length-penalty 1.5 \
    --threads 1 2>/dev/null | cmp -s - "$WORK/out1.txt" ||
    fail "--beam 1 (greedy) depends on the length penalty"
echo "  ok: moectl translate: 7 lines for 7 (one empty), the same twice, --beam 1 and 3"
# shellcheck disable=SC2086
"$BIN/moectl" bleu "$WORK/in.txt" "$WORK/out3.txt" | grep -q "^BLEU = " || fail "moectl bleu"

# bad corpora: one sentence naming the file and line, exit 1, nothing written
head -n 299 "$WORK/train.es" >"$WORK/short.es"
sed '17s/.*/  /' "$WORK/train.es" >"$WORK/empty.es"
awk 'NR == 23 { for (i = 0; i < 151; i++) printf "w "; print ""; next } { print }' \
    "$WORK/train.en" >"$WORK/long.en"
# shellcheck disable=SC2086
expect_fail "different line counts" "train.en has 300 lines and .*short.es has 299; line i of one must translate line i" \
    "$BIN/moe-worker" $MT --tgt-train "$WORK/short.es" --final-model "$WORK/bad1"
# shellcheck disable=SC2086
expect_fail "an empty line" "empty.es: line 17 is empty" \
    "$BIN/moe-worker" $MT --tgt-train "$WORK/empty.es" --final-model "$WORK/bad2"
# shellcheck disable=SC2086
expect_fail "a line over --max-len" "long.en: line 23 has 151 tokens, more than --max-len 150" \
    "$BIN/moe-worker" $MT --src-train "$WORK/long.en" --final-model "$WORK/bad3"
for b in bad1 bad2 bad3; do [ ! -e "$WORK/$b" ] || fail "$b was written"; done
expect_fail "moectl translate: a line over the model's max_len" \
    "long.en: line 23 has 151 tokens, more than the model's max_len 150" \
    "$BIN/moectl" translate "$WORK/m1" --input "$WORK/long.en"
[ ! -s "$WORK/out.txt" ] || fail "moectl translate printed before refusing"
"$BIN/moectl" translate "$WORK/m1" >/dev/null 2>&1
[ $? = 2 ] || fail "moectl translate without --input: not a usage error"
expect_fail "moectl eval of a translation model" "m1 is a translation model .*: use moectl translate" \
    "$BIN/moectl" eval "$WORK/m1" --corpus "$WORK/valid.es"
# what --task translate does not run yet is a usage error (exit 2)
for bad in "--moe hierarchical --groups 2 --experts-per-group 2 --k-primary 1" \
    "--dense-optimizer factored"; do
    # shellcheck disable=SC2086
    "$BIN/moe-worker" $MT $bad >"$WORK/out.txt" 2>&1
    [ $? = 2 ] && grep -q "task translate" "$WORK/out.txt" ||
        fail "--task translate $bad: not refused as a usage error: $(cat "$WORK/out.txt")"
done
"$BIN/moe-worker" --task translat >"$WORK/out.txt" 2>&1
[ $? = 2 ] && grep -q -- '--task: expected lm or translate, got "translat"' "$WORK/out.txt" ||
    fail "--task translat: $(cat "$WORK/out.txt")"
echo "  ok: a hierarchical MoE, the factored dense optimizer, a misspelt task: exit 2"
# the memory check before allocating (MOE_MEM_AVAILABLE stands for MemAvailable)
# shellcheck disable=SC2086
MOE_MEM_AVAILABLE=1000000 expect_fail "too little memory" \
    "the translation model \(D=16, .* needs about .* but only 1.0 MB .* are available" \
    "$BIN/moe-worker" $MT --final-model "$WORK/bad4"
[ ! -e "$WORK/bad4" ] || fail "a model was written without the memory for it"
# --checkpoint-dir: a folder per checkpoint; moectl translate takes the
# directory (its newest) as well as a step folder
# shellcheck disable=SC2086
"$BIN/moe-worker" $MT --steps 6 --checkpoint-dir "$WORK/ck" --checkpoint-every 4 >/dev/null 2>&1 ||
    fail "training with --checkpoint-dir failed"
[ -f "$WORK/ck/step-00000004/model.safetensors" ] && [ -f "$WORK/ck/step-00000006/model.safetensors" ] ||
    fail "checkpoints of steps 4 and 6: $(ls "$WORK/ck")"
"$BIN/moectl" translate "$WORK/ck" --input "$WORK/in.txt" --beam 2 --threads 1 >"$WORK/ck.txt" 2>/dev/null &&
    "$BIN/moectl" translate "$WORK/ck/step-00000006" --input "$WORK/in.txt" --beam 2 --threads 1 2>/dev/null |
    cmp -s - "$WORK/ck.txt" || fail "moectl translate of the checkpoint directory is not its newest step"
echo "  ok: --checkpoint-dir writes steps 4 and 6; moectl translate DIR reads step 6"
