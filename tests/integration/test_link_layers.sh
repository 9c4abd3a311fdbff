# Each program links common/ and its own part only (moectl also the
# worker's, to run trained models): no function defined by another part's
# library is in its binary (nm of the build's libraries and
# programs; the rule of docs/ARCHITECTURE.md, enforced at link time).
LIBDIR=$BIN/..
defined() { # LIB: the functions it defines
    nm --defined-only "$LIBDIR/$1" 2>/dev/null | awk '$2 == "T" { print $3 }' | sort -u
}
for lib in libmoe_common.a libmoe_worker.a libmoe_expert.a libmoe_coordinator.a libmoe_moectl.a; do
    [ -s "$LIBDIR/$lib" ] || fail "missing $LIBDIR/$lib"
    defined $lib >"$WORK/$lib.syms"
    [ -s "$WORK/$lib.syms" ] || fail "$lib defines no function"
done
check() { # PROGRAM OWN_LIB [USED_LIB]
    nm --defined-only "$BIN/$1" | awk '$2 == "T" { print $3 }' | sort -u >"$WORK/$1.syms"
    for lib in libmoe_worker.a libmoe_expert.a libmoe_coordinator.a libmoe_moectl.a; do
        [ "$lib" = "$2" ] || [ "$lib" = "${3:-}" ] && continue
        comm -12 "$WORK/$1.syms" "$WORK/$lib.syms" >"$WORK/both"
        [ -s "$WORK/both" ] && fail "$1 links code of $lib: $(head -n 3 "$WORK/both" | tr '\n' ' ')"
    done
    own=$(comm -12 "$WORK/$1.syms" "$WORK/$2.syms" | wc -l)
    [ "$own" -gt 0 ] || fail "$1 defines nothing of its own library $2"
    echo "  ok: $1 links common/ and $2${3:+ and $3} only ($own functions of its own part)"
}
check moe-worker libmoe_worker.a
check moe-server libmoe_expert.a
check moe-coordinator libmoe_coordinator.a
check moectl libmoe_moectl.a libmoe_worker.a
