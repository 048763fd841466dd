#!/usr/bin/env bash
# Integration test of bulk imports (`chatctl import`, the ingest's bulk lane on chat.bulk.*),
# against the stack that scripts/test started (settings from the environment and $CHAT_HOME/env):
#   - 3,000 posts over two conversations are stored once each, in the order of the input within
#     each conversation, with contiguous seqs; two bad lines are named (by line number) and
#     skipped, the rest stored, and the exit code says so;
#   - the same input again stores nothing more (every post answered as a duplicate);
#   - the lane: while 20,000 imported posts still wait (the stack's CHAT_INGEST_BULK_RATE drains
#     them at 2,000 a second), a live post (`chatctl send`, the api role's post) is stored, and
#     the import is then stored whole.
#
#   import_test.sh [BUILD_DIR]     (default: $CHAT_BUILD_DIR, else <checkout>/build)
# Exits 77 (skipped) when no test stack is running.
set -euo pipefail

# shellcheck source=tests/integration/stack_lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/stack_lib.sh" "$@"
[[ -x "$chatctl" ]] || { echo "FAIL: $chatctl not built"; exit 1; }

# imp FILE ARGS...: chatctl import ARGS < FILE
imp() {
    local file=$1; shift
    rc=0
    timeout 120 "$chatctl" import "$@" <"$file" >"$tmp/out" 2>"$tmp/err" || rc=$?
}
# newest CONV: the seq and body of the conversation's newest message ("SEQ BODY")
newest() {
    ctl history "$1" --limit 1
    printf '%s %s' "$(field seq)" "$(field body)"
}

run_id="$$x$(date +%s)"
a="impa-$run_id" b="impb-$run_id" c="impc-$run_id" d="impd-$run_id"
for conv in "$a" "$b" "$c" "$d"; do
    ctl conv create "$conv" importer
    [[ $rc -eq 0 ]] || { fail "conv create $conv: $(why)"; exit 1; }
done

# ------------------------------------------------------------ 3,000 posts, two bad lines
awk -v a="$a" -v b="$b" 'BEGIN {
    for (i = 1; i <= 3000; i++) {
        printf "{\"conv\":\"%s\",\"from\":\"importer\",\"text\":\"%d\",\"cmid\":\"k%d\"}\n", (i % 2 ? a : b), i, i
        if (i == 1500) print "this is not JSON"
        if (i == 2000) printf "{\"conv\":\"no/such id\",\"from\":\"importer\",\"text\":\"x\",\"cmid\":\"bad\"}\n"
    }
}' >"$tmp/in.jsonl"
imp "$tmp/in.jsonl" --wait
if [[ $rc -eq 1 && "$(field published)" == 3000 && "$(field accepted)" == 3000 && "$(field bad_lines)" == 2 &&
      "$(field conversations_stored)" == 2 ]] && grep -q '^chatctl import: line 1501: not a JSON object' "$tmp/err" &&
      grep -q '^chatctl import: line 2002: post.conv must be' "$tmp/err"; then
    pass "3,000 posts imported and stored; lines 1501 and 2002 named and skipped, exit 1"
else
    fail "import of 3,000 posts with two bad lines: $(why)"
fi

# each conversation: seqs 1..1500, in the input's order (a: 1, 3, 5 ... 2999; b: 2, 4 ... 3000)
ok=1
for conv in "$a" "$b"; do
    first=$([[ $conv == "$a" ]] && echo 1 || echo 2)
    before=0
    while :; do
        if ((before == 0)); then ctl history "$conv" --limit 100; else ctl history "$conv" --limit 100 --before "$before"; fi
        [[ $rc -eq 0 ]] || { ok=0; fail "history $conv: $(why)"; break; }
        while IFS= read -r line; do
            seq=$(sed -n -E 's/.*"seq":([0-9]+).*/\1/p' <<<"$line")
            body=$(sed -n -E 's/.*"body":"([0-9]+)".*/\1/p' <<<"$line")
            if [[ "$body" != "$((first + 2 * (seq - 1)))" ]]; then
                ok=0
                fail "$conv: seq $seq holds body \"$body\", want $((first + 2 * (seq - 1))) (the input's order)"
                break 2
            fi
            before=$seq
        done <"$tmp/out"
        ((before > 1)) || break
    done
    got=$(newest "$conv")
    [[ "${got%% *}" == 1500 ]] || { ok=0; fail "$conv: newest seq ${got%% *}, want 1500"; }
done
((ok)) && pass "each conversation holds its 1,500 posts at seqs 1-1500, in the order of the input"

# ------------------------------------------------------------ the same input again
imp "$tmp/in.jsonl" --wait
if [[ $rc -eq 1 && "$(field duplicates)" == 3000 && "$(newest "$a")" == "1500 2999" && "$(newest "$b")" == "1500 3000" ]]; then
    pass "the same import again: 3,000 duplicates, nothing stored twice"
else
    fail "import again: want 3000 duplicates and seq 1500 still newest; $(why)"
fi

# ------------------------------------------------------------ the lane
rate=${CHAT_INGEST_BULK_RATE:-2000}
if ((rate <= 0 || rate > 5000)); then
    fail "this test needs the stack's CHAT_INGEST_BULK_RATE between 1 and 5000 (scripts/lib/env.sh: 2000), got $rate"
else
    awk -v c="$c" 'BEGIN { for (i = 1; i <= 20000; i++)
        printf "{\"conv\":\"%s\",\"from\":\"importer\",\"text\":\"%d\",\"cmid\":\"l%d\"}\n", c, i, i }' >"$tmp/big.jsonl"
    imp "$tmp/big.jsonl"
    [[ $rc -eq 0 && "$(field accepted)" == 20000 ]] || fail "import of 20,000 posts: $(why)"
    ctl send "$d" --from importer "a live post while the import waits"
    sent_rc=$rc
    sent_seq=$(field seq)
    waiting=$(newest "$c")
    waiting=${waiting%% *}
    if [[ $sent_rc -eq 0 && "$sent_seq" == 1 && -n "$waiting" && "$waiting" -lt 20000 ]]; then
        pass "a live post was stored while $((20000 - waiting)) imported posts still waited (bulk lane at $rate/s)"
    else
        fail "live post during the import: send exit $sent_rc seq '$sent_seq', the import's newest seq '$waiting' (want < 20000)"
    fi
    deadline=$((SECONDS + 20000 / rate + 60))
    while (($(newest "$c" | cut -d' ' -f1) < 20000)) && ((SECONDS < deadline)); do sleep 1; done
    if [[ "$(newest "$c")" == "20000 20000" ]]; then
        pass "the import was then stored whole: seq 20000 holds its last post"
    else
        fail "the import's newest after the drain: $(newest "$c") (want \"20000 20000\")"
    fi
fi

# ------------------------------------------------------------ usage
for args in "--window 0" "--window x" "--id a/b" "--frobnicate"; do
    # shellcheck disable=SC2086
    imp /dev/null $args
    if [[ $rc -eq 2 ]]; then pass "chatctl import $args -> exit 2"; else fail "chatctl import $args: want exit 2; $(why)"; fi
done

finish import_test
