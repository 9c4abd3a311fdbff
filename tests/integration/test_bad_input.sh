# Every bad input gives a clear error naming the file or key, a non-zero
# exit, and leaves existing files untouched.
make_corpora
W="$BIN/moe-worker"
T="--train $WORK/train.txt --valid $WORK/valid.txt"
: >"$WORK/empty.txt"
printf ' \n\n \n' >"$WORK/blank.txt"
mkdir "$WORK/adir"

expect_fail "missing corpus" "nope.txt: cannot open" $W --train "$WORK/nope.txt" $TINY --steps 1
expect_fail "unreadable corpus (a folder)" "adir: not a regular file" $W --train "$WORK/adir" $TINY --steps 1
expect_fail "empty corpus" "empty.txt: corpus is empty" $W --train "$WORK/empty.txt" $TINY --steps 1
expect_fail "blank-lines corpus" "blank.txt: corpus is empty" $W --train "$WORK/blank.txt" $TINY --steps 1
printf 'the cat\000sat\n' >"$WORK/binary.txt"
expect_fail "binary corpus (a NUL byte)" "binary.txt: not a text file \(a NUL byte at offset 7\)" $W --train "$WORK/binary.txt" $TINY --steps 1
mkfifo "$WORK/fifo"
expect_fail "a FIFO as corpus (refused, not waited on)" "fifo: not a regular file" timeout 10 $W --train "$WORK/fifo" $TINY --steps 1
expect_fail "empty validation corpus" "empty.txt: corpus is empty" $W --train "$WORK/train.txt" --valid "$WORK/empty.txt" $TINY --steps 1
expect_fail "corpus too small for the batch" "too small for a batch" $W $T $TINY --batch 100000 --steps 1
expect_fail "unknown flag" "unknown option --nope" $W $T --nope 3
expect_fail "bad integer" "--batch: expected an integer, got \"abc\"" $W $T --batch abc
expect_fail "out of range" "--lr: -1 is out of range" $W $T --lr -1
expect_fail "missing value" "steps: missing value" $W $T --steps
expect_fail "k larger than experts" "--k 9 is larger than --n-experts 6" $W $T $TINY --k 9
# the outputs are checked before training, not after it
expect_fail "checkpoint folder in a missing folder" "nope/ck: cannot write checkpoints here: the folder .*nope does not exist" $W $T $TINY --steps 1 --checkpoint-dir "$WORK/nope/ck"
expect_fail "a file as checkpoint folder" "train.txt is not a folder" $W $T $TINY --steps 1 --checkpoint-dir "$WORK/train.txt"
expect_fail "final model in a missing folder" "nope/m: cannot write the final model here" $W $T $TINY --steps 1 --final-model "$WORK/nope/m"
expect_fail "report in a missing folder" "nope/r.json: cannot write the report here" $W $T $TINY --steps 1 --report "$WORK/nope/r.json"
expect_fail "coordinator: checkpoint folder in a missing folder" "nope/ck: cannot write checkpoints here" "$BIN/moe-coordinator" $TINY --coordinator tcp://127.0.0.1:9 --checkpoint-dir "$WORK/nope/ck"
expect_fail "server: checkpoint folder in a missing folder" "nope/ck: cannot write checkpoints here" "$BIN/moe-server" $TINY --coordinator tcp://127.0.0.1:9 --bind tcp://127.0.0.1:9 --checkpoint-dir "$WORK/nope/ck"
[ -e "$WORK/nope" ] && fail "a failed start created a folder"
printf '[train]\nbatch = 4x\n' >"$WORK/bad.ini"
expect_fail "bad config value" "bad.ini:2: batch: expected an integer" $W $T --config "$WORK/bad.ini"
printf '[train]\nbatchh = 4\n' >"$WORK/unknown.ini"
expect_fail "unknown config key" "unknown.ini:2: unknown option \"batchh\"" $W $T --config "$WORK/unknown.ini"
printf '[trian]\nbatch = 4\n' >"$WORK/section.ini"
expect_fail "unknown config section" "section.ini:2: unknown section \\[trian\\]" $W $T --config "$WORK/section.ini"
printf '[train]\nbatch = 4\n[model]\nbatch = 8\n' >"$WORK/twice.ini"
expect_fail "config key given twice" "twice.ini:4: \"batch\" is given a second time" $W $T --config "$WORK/twice.ini"
printf '[train\nbatch = 4\n' >"$WORK/broken.ini"
expect_fail "malformed config line" "broken.ini:1: malformed line" $W $T --config "$WORK/broken.ini"
expect_fail "missing config file" "nope.ini: cannot open config file" $W $T --config "$WORK/nope.ini"
expect_fail "a folder as config file" "adir: the config file is not a regular file" $W $T --config "$WORK/adir"
printf '[train]\nbatch = 4\000\n' >"$WORK/nul.ini"
expect_fail "a config file with a NUL byte" "nul.ini: the config file is not text \(a NUL byte at offset 17\)" $W $T --config "$WORK/nul.ini"

# A good checkpoint to damage.
$W $T $TINY --steps 4 --checkpoint-dir "$WORK/ck" >/dev/null || fail "training the checkpoint"
ck="$WORK/ck/step-00000004"
snap() { (cd "$WORK/ck" && find . -type f | sort | xargs cksum) >"$WORK/$1"; }
snap before

expect_fail "resume from a folder without a checkpoint" "no checkpoint here" $W $T $TINY --steps 8 --resume "$WORK/adir"
cp -r "$WORK/ck" "$WORK/trunc"
size=$(wc -c <"$WORK/trunc/step-00000004/model.safetensors")
head -c $((size / 2)) "$ck/model.safetensors" >"$WORK/trunc/step-00000004/model.safetensors"
expect_fail "truncated checkpoint" "model.safetensors" $W $T $TINY --steps 8 --resume "$WORK/trunc" --checkpoint-dir "$WORK/trunc"
cp -r "$WORK/ck" "$WORK/flip"
# flip one byte in the middle of the tensor data
python3 - "$WORK/flip/step-00000004/model.safetensors" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[len(b) * 3 // 4] ^= 0x40
open(p, 'wb').write(bytes(b))
PY
expect_fail "corrupted checkpoint (flipped data byte)" "model.safetensors: checksum mismatch" $W $T $TINY --steps 8 --resume "$WORK/flip" --checkpoint-dir "$WORK/flip"
cp -r "$WORK/ck" "$WORK/garbage"
printf 'garbage' >"$WORK/garbage/step-00000004/optim.safetensors"
expect_fail "garbage optimizer file" "optim.safetensors" $W $T $TINY --steps 8 --resume "$WORK/garbage" --checkpoint-dir "$WORK/garbage"
printf '../etc\n' >"$WORK/garbage/latest"
expect_fail "malformed latest pointer" "latest: malformed" $W $T $TINY --steps 8 --resume "$WORK/garbage"
expect_fail "checkpoint of another model shape" "--d-model 12 contradicts .*step-00000004, which was trained with d_model = 16" $W $T $TINY --d-model 12 --steps 8 --resume "$WORK/ck" --checkpoint-dir "$WORK/ck" --report "$WORK/report.json"
expect_fail "checkpoint of another expert count" "--n-experts 7 contradicts .*n_experts = [0-9]+" $W $T $TINY --n-experts 7 --steps 8 --resume "$WORK/ck" --checkpoint-dir "$WORK/ck"
snap after
cmp "$WORK/before" "$WORK/after" || fail "a failed run changed the checkpoint folder"
[ -e "$WORK/report.json" ] && fail "a failed run wrote a report"
ls -a "$WORK/ck" | grep -q tmp && fail "a temporary file was left in the checkpoint folder"
echo "  ok: the checkpoint folder is unchanged after every failure"
