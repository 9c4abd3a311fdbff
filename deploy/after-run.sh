#!/bin/sh
# The end of `make run`: a few lines sampled from the model just trained,
# and the commands that evaluate, sample and export it.
# Usage: deploy/after-run.sh BIN_DIR RUN_DIR
set -u
bin=$1
run=$2
ck=$run/checkpoints
[ -d "$ck" ] || exit 0
echo
echo "Sampled from the model just trained (moectl generate, temperature 0.8, top 40 words):"
"$bin/moectl" generate "$ck" --tokens 60 --temperature 0.8 --top-k 40 --seed 1 2>/dev/null |
    grep -v "^ *$" | head -n 4 | sed "s/^/    /" || echo "    (moectl generate failed: see moectl generate $ck)"
cat <<EOT

Use it:
    $bin/moectl eval $ck --corpus data/wikitext-2/wiki.test.tokens
    $bin/moectl generate $ck --prompt "The" --tokens 50
    $bin/moectl export $ck $run/model    # a folder PyTorch loads (tools/torch_model.py)
EOT
