# The three golden runs (sourced by tests/integration/test_golden.sh and
# tests/golden/record.sh; GOLDEN_DIR is this folder): small models trained with the reference GEMM
# (MOE_BLAS=reference), so that their bytes depend on the code only, not on
# the BLAS kernels of the machine. Needs BIN, WORK, fail, the cl_* helpers of
# tests/integration/lib.sh and make_corpora's train.txt.
#   golden_run NAME OUT: trains run NAME and writes the canonical form of its
#   model and optimizer state (tests/golden/canon.py) to OUT.
GOLDEN_NAMES="default sigmoid cluster"
GOLDEN_MODEL="--d-model 16 --d-hidden 24 --n-experts 6 --k 2 --batch 4 --unroll 8 \
--eval-batch 3 --warmup 5 --lr 0.01 --threads 1 --vocab-max 200 --steps 24 --valid= \
--log-every 1000 --log-level warn"
golden_run() {
    export MOE_BLAS=reference
    case "$1" in
    default | sigmoid)
        extra=""
        [ "$1" = sigmoid ] && extra="--moe-sigmoid"
        "$BIN/moe-worker" --train "$WORK/train.txt" $GOLDEN_MODEL $extra \
            --checkpoint-dir "$WORK/golden-$1" >/dev/null || fail "golden run $1 failed"
        d="$WORK/golden-$1/step-00000024"
        /usr/bin/python3 "$GOLDEN_DIR/canon.py" "$2" "$d/model.safetensors+$d/optim.safetensors" ||
            fail "golden run $1: canon.py"
        ;;
    cluster) # 2 expert servers + 2 workers with a coordinator
        A="--train $WORK/train.txt $GOLDEN_MODEL --log-level info --checkpoint-dir $WORK/golden-cl/ck"
        cl_init golden-cl 2
        cl_server_endpoints 0 1
        cl_coord --servers "$CLSV"
        cl_server 0
        cl_server 1
        cl_worker 0
        cl_worker 1
        wait "$WPID0" || fail "golden cluster: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
        wait "$WPID1" || fail "golden cluster: worker 1 failed"
        cl_stop
        "$BIN/moectl" export "$WORK/golden-cl/ck" "$WORK/golden-cl.export.safetensors" >/dev/null ||
            fail "golden cluster: export"
        /usr/bin/python3 "$GOLDEN_DIR/canon.py" "$2" "$WORK/golden-cl.export.safetensors" ||
            fail "golden cluster: canon.py"
        ;;
    esac
    unset MOE_BLAS
}
