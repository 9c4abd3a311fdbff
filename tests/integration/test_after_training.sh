# After training: moectl eval gives moe-worker's own validation perplexity,
# exactly; generate is deterministic for a seed and reproduces a learned
# pattern greedily; export writes a bundle PyTorch loads, with the same
# perplexity; --resume takes a step folder, a checkpoint directory or an
# export; a run without --checkpoint-dir keeps its final model.
make_corpora
PY=/usr/bin/python3
C="$BIN/moectl"
T="--train $WORK/train.txt --valid $WORK/valid.txt"
json_field() { $PY -c "import json,sys; print(repr(json.load(open(sys.argv[1]))[sys.argv[2]]))" "$1" "$2"; }

# eval = moe-worker's validation, bit for bit (same batch, same threads)
"$BIN/moe-worker" $T $TINY --steps 15 --checkpoint-dir "$WORK/ck" --report "$WORK/report.json" \
    >/dev/null || fail "training"
"$C" eval "$WORK/ck" --corpus "$WORK/valid.txt" --threads 1 --json >"$WORK/eval.json" 2>/dev/null ||
    fail "moectl eval failed"
ours=$(json_field "$WORK/report.json" valid_ppl)
theirs=$(json_field "$WORK/eval.json" perplexity)
[ "$ours" = "$theirs" ] || fail "moectl eval $theirs, moe-worker's validation $ours"
echo "  ok: moectl eval = moe-worker's validation perplexity, $ours, to the last bit"
# a step folder and --batch=value give the same; words outside the vocabulary are counted
"$C" eval "$WORK/ck/step-00000015" --corpus="$WORK/valid.txt" --threads=1 --batch=3 --json \
    >"$WORK/eval2.json" 2>/dev/null || fail "moectl eval of the step folder"
[ "$(json_field "$WORK/eval2.json" perplexity)" = "$ours" ] || fail "the step folder evaluates otherwise"
printf 'the zzqx of <unk>\nqqqyy the\n' >"$WORK/oov.txt"
"$C" eval "$WORK/ck" --corpus "$WORK/oov.txt" --batch 1 >"$WORK/out.txt" 2>&1 ||
    fail "eval of a corpus with unknown words: $(cat "$WORK/out.txt")"
grep -q "^2 words of .*oov.txt are not in the model's vocabulary of [0-9]* words" "$WORK/out.txt" ||
    fail "the <unk> count is not reported: $(cat "$WORK/out.txt")"
grep -q "^1 tokens of .*oov.txt are <unk> in the text itself" "$WORK/out.txt" ||
    fail "the text's own <unk> is not told apart: $(cat "$WORK/out.txt")"
echo "  ok: a step folder, --flag=value; of 6 words, 2 unknown ones and the text's own <unk> counted apart"

# export bundle: PyTorch loads it and agrees to 1e-4; the file evaluates as the checkpoint
"$C" export "$WORK/ck" "$WORK/bundle" >/dev/null 2>&1 || fail "moectl export to a bundle"
for f in model.safetensors config.ini vocab.txt tools/torch_model.py; do
    [ -s "$WORK/bundle/$f" ] || fail "the bundle has no $f"
done
cmp "$WORK/bundle/vocab.txt" "$WORK/ck/step-00000015/vocab.txt" || fail "the bundle's vocabulary differs"
"$C" eval "$WORK/bundle/model.safetensors" --corpus "$WORK/valid.txt" --threads 1 --json \
    >"$WORK/eval3.json" 2>/dev/null || fail "moectl eval of the export"
[ "$(json_field "$WORK/eval3.json" perplexity)" = "$ours" ] || fail "the export evaluates otherwise"
"$C" eval "$WORK/bundle" --corpus "$WORK/valid.txt" --threads 1 --json >"$WORK/eval4.json" \
    2>/dev/null || fail "moectl eval of the bundle folder"
[ "$(json_field "$WORK/eval4.json" perplexity)" = "$ours" ] || fail "the bundle folder evaluates otherwise"
torch=$($PY "$WORK/bundle/tools/torch_model.py" "$WORK/bundle" "$WORK/valid.txt") ||
    fail "PyTorch could not load the bundle"
$PY -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)" \
    "$theirs" "$torch" || fail "PyTorch's perplexity $torch, moectl eval $theirs"
echo "  ok: export bundle (4 files); PyTorch $torch against moectl eval $theirs"

# --resume takes an export: the model it loads is the checkpoint's, to the byte
# (0 more steps, then the final model written again without --checkpoint-dir)
"$BIN/moe-worker" $T --threads 1 --steps 15 --resume "$WORK/bundle/model.safetensors" \
    --final-model "$WORK/fb" >"$WORK/out.txt" 2>&1 || fail "resume from the export: $(cat "$WORK/out.txt")"
grep -q "model of step 15 written to .*fb" "$WORK/out.txt" || fail "no final model: $(cat "$WORK/out.txt")"
cmp "$WORK/fb/step-00000015/model.safetensors" "$WORK/ck/step-00000015/model.safetensors" ||
    fail "resuming from the export loaded another model than its checkpoint"
"$BIN/moe-worker" $T --threads 1 --steps 20 --resume "$WORK/ck/step-00000015" --final-model "$WORK/fa" \
    >/dev/null 2>&1 || fail "resume from a step folder"
"$C" verify "$WORK/fa" >/dev/null 2>&1 || fail "the final model does not verify"
echo "  ok: --resume of an export loads the checkpoint's model byte for byte; of a step folder trains on; final models kept without --checkpoint-dir"
"$C" export --params-only "$WORK/ck" "$WORK/p.safetensors" >/dev/null 2>&1 || fail "params-only export"
"$BIN/moe-worker" $T --threads 1 --steps 16 --resume "$WORK/p.safetensors" --final-model none \
    >"$WORK/out.txt" 2>&1 || fail "resume from a params-only export: $(cat "$WORK/out.txt")"
grep -q "holds no optimizer state .*the optimizer starts afresh" "$WORK/out.txt" ||
    fail "no warning for a params-only resume: $(cat "$WORK/out.txt")"
echo "  ok: a params-only export resumes with a fresh optimizer, and says so"

# generate: a seed gives one text; greedy decoding reproduces a learned pattern
for i in $(seq 300); do echo "one two three four five six seven eight"; done >"$WORK/rep.txt"
"$BIN/moe-worker" --train "$WORK/rep.txt" --valid "$WORK/rep.txt" $TINY --lr 0.02 --steps 150 \
    --checkpoint-dir "$WORK/rep" >/dev/null 2>&1 || fail "training on the repetitive corpus"
"$C" generate "$WORK/rep" --prompt "three four" --tokens 13 --temperature 0 >"$WORK/g.txt" 2>/dev/null ||
    fail "moectl generate failed"
printf 'three four five six seven eight\none two three four five six seven eight\n' >"$WORK/want.txt"
cmp "$WORK/g.txt" "$WORK/want.txt" || fail "greedy generation: $(cat "$WORK/g.txt")"
"$C" generate "$WORK/ck" --tokens 30 --seed 7 --top-k 50 >"$WORK/s1.txt" 2>/dev/null || fail "sampling"
"$C" generate "$WORK/ck" --tokens 30 --seed 7 --top-k=50 >"$WORK/s2.txt" 2>/dev/null || fail "sampling"
"$C" generate "$WORK/ck" --tokens 30 --seed 8 --top-k 50 >"$WORK/s3.txt" 2>/dev/null || fail "sampling"
cmp "$WORK/s1.txt" "$WORK/s2.txt" || fail "the same seed sampled two texts"
cmp -s "$WORK/s1.txt" "$WORK/s3.txt" && fail "seeds 7 and 8 sampled the same 30 words"
[ "$(wc -w <"$WORK/s1.txt")" -le 30 ] || fail "more words than --tokens"
"$C" generate "$WORK/rep" --prompt "one zzqx" --tokens 3 >"$WORK/out.txt" 2>&1 || fail "an unknown prompt word failed"
grep -q "the prompt's word \"zzqx\" is not in the model's vocabulary (10 words): it reads as <unk>" \
    "$WORK/out.txt" || fail "no message for an unknown prompt word: $(cat "$WORK/out.txt")"
echo "  ok: greedy decoding continues the pattern; seeds reproduce; an unknown prompt word is named"

# usage errors exit 2, failures 1
"$C" eval "$WORK/ck" >/dev/null 2>"$WORK/err.txt"
[ $? = 2 ] && grep -q "eval needs --corpus FILE" "$WORK/err.txt" || fail "eval without --corpus: $(cat "$WORK/err.txt")"
"$C" generate "$WORK/ck" --temperature hot >/dev/null 2>"$WORK/err.txt"
[ $? = 2 ] && grep -q -- "--temperature: expected a number" "$WORK/err.txt" || fail "a bad temperature: $(cat "$WORK/err.txt")"
"$C" eval "$WORK/nothing" --corpus "$WORK/valid.txt" >/dev/null 2>"$WORK/err.txt"
[ $? = 1 ] && grep -q "nothing: No such file or directory" "$WORK/err.txt" || fail "eval of nothing: $(cat "$WORK/err.txt")"
echo "  ok: usage errors exit 2, a missing checkpoint 1, each one sentence"
