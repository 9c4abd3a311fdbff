# moectl bleu against NLTK's corpus_bleu (Debian's python3-nltk) to 1e-6, on
# a few hundred lines of the bundled Spanish valid split turned into
# hypotheses of every kind: words dropped, swapped, repeated (clipping),
# replaced by words the reference never uses, lines shortened to fewer than
# four tokens and emptied (NLTK's one-n-gram floor), a short corpus (brevity
# penalty) and a long one; and the clear error of different line counts.
BI="$IT_DIR/../../data/bible-en-es"
/usr/bin/python3 -c "import nltk" 2>/dev/null ||
    fail "python3-nltk is not installed (deploy/install-deps.sh --test)"
head -n 400 "$BI/valid.es" >"$WORK/ref.txt"
# awk's rand() is seeded, so each hypothesis is the same file every run.
hyp() {
    awk -v seed="$1" -v mode="$2" 'BEGIN { srand(seed) }
    {
        n = split($0, w, " ")
        out = ""
        for (i = 1; i <= n; i++) {
            r = rand()
            t = w[i]
            if (mode == "short" && r < 0.25) continue
            if (mode == "long" && r < 0.2) t = t " " t
            if (r < 0.05) t = "zzq" int(rand() * 7)
            else if (r < 0.10 && i < n) { t = w[i + 1]; w[i + 1] = w[i] }
            else if (r < 0.14) t = t " " t
            out = out (out == "" ? "" : " ") t
        }
        r = rand()
        if (r < 0.03) out = ""
        else if (r < 0.08) { split(out, v, " "); out = v[1] (r < 0.055 ? " " v[2] : "") }
        print out
    }' "$WORK/ref.txt" >"$WORK/hyp-$1-$2.txt"
}
for c in "1 mix" "2 short" "3 long" "4 mix"; do
    set -- $c
    hyp "$1" "$2"
    h="$WORK/hyp-$1-$2.txt"
    ours=$("$BIN/moectl" bleu "$WORK/ref.txt" "$h") || fail "moectl bleu failed on $2"
    ours=$(echo "$ours" | sed -n 's/^BLEU = [0-9.]* (\([0-9.]*\)).*/\1/p')
    theirs=$(/usr/bin/python3 "$IT_DIR/bleu_check.py" "$WORK/ref.txt" "$h") ||
        fail "bleu_check.py failed"
    awk -v a="$ours" -v b="$theirs" 'BEGIN { d = a - b; exit !(a != "" && d < 1e-6 && d > -1e-6 && b > 0.05) }' ||
        fail "hypotheses $c: moectl bleu $ours, NLTK corpus_bleu $theirs"
    echo "  ok: hypotheses $c ($(wc -l <"$h") lines): moectl $ours, NLTK $theirs"
done
ours=$("$BIN/moectl" bleu "$WORK/ref.txt" "$WORK/ref.txt")
echo "$ours" | grep -q "^BLEU = 100.0000 (1.0000000000)" || fail "a file against itself: $ours"
head -n 399 "$WORK/ref.txt" >"$WORK/short.txt"
expect_fail "different line counts" \
    "ref.txt has 400 lines and .*short.txt has 399; line i of one must be" \
    "$BIN/moectl" bleu "$WORK/ref.txt" "$WORK/short.txt"
expect_fail "a missing file" "cannot read .*nothing.txt: No such file" \
    "$BIN/moectl" bleu "$WORK/ref.txt" "$WORK/nothing.txt"
