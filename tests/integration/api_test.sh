#!/usr/bin/env bash
# Integration test of the api role (chat.api.v1.*) through chatctl, against the stack that
# scripts/test started (settings from the environment and $CHAT_HOME/env):
#   - conv create; three sends get seq 1, 2, 3 and history shows them newest first;
#   - the same cmid again answers the same seq and id and stores nothing new;
#   - history --limit and --before page; --as a non-member is refused (not_member);
#   - conv add / remove change conv members; conv delete; unknown conversations are not_found;
#   - usage errors exit 2.
#
#   api_test.sh [BUILD_DIR]     (default: $CHAT_BUILD_DIR, else <checkout>/build)
# Exits 77 (skipped) when no test stack is running.
set -euo pipefail

# shellcheck source=tests/integration/stack_lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/stack_lib.sh" "$@"
[[ -x "$chatctl" ]] || { echo "FAIL: $chatctl not built"; exit 1; }

# column KEY: the value of KEY on every line of $tmp/out, space separated.
column() {
    local line out=''
    while IFS= read -r line; do
        out+="$(printf '%s' "$line" | sed -n -E "s/.*\"$1\":(\"([^\"]*)\"|([0-9]+)).*/\\2\\3/p") "
    done <"$tmp/out"
    printf '%s' "${out% }"
}

lines() { grep -c . "$tmp/out" || true; }

run_id="$$x$(date +%s)"
conv="api-$run_id"
alice="alice-$run_id"
bob="bob-$run_id"
carol="carol-$run_id"
dave="dave-$run_id"

# ------------------------------------------------------------ conv create
ctl conv create "$conv" "$alice" "$bob"
if [[ $rc -eq 0 && "$(field created)" == true ]]; then
    pass "conv create $conv -> created"
else
    fail "conv create: $(why)"
fi
ctl conv create "$conv" "$alice"
if [[ $rc -eq 0 && "$(field created)" == false ]]; then
    pass "conv create again -> created false"
else
    fail "conv create again: $(why)"
fi

# ------------------------------------------------------------ three sends, seq 1..3
declare -a ids
for i in 1 2 3; do
    ctl send "$conv" --from "$alice" --cmid "m$i-$run_id" "hello $i"
    seq=$(field seq)
    ids[i]=$(field id)
    if [[ $rc -eq 0 && "$seq" == "$i" && -n "${ids[i]}" && "$(field cmid)" == "m$i-$run_id" ]]; then
        pass "send $i -> seq $seq id ${ids[i]}"
    else
        fail "send $i: want seq $i, $(why)"
    fi
done

ctl history "$conv"
if [[ $rc -eq 0 && "$(lines)" == 3 && "$(column seq)" == "3 2 1" && "$(column body)" == "hello 3 hello 2 hello 1" \
    && "$(column type)" == "msg msg msg" && "$(column from)" == "$alice $alice $alice" ]]; then
    pass "history: 3 msg frames newest first with the right bodies"
else
    fail "history: want seq 3 2 1, bodies hello 3..1; $(why)"
fi

# ------------------------------------------------------------ same cmid again
ctl send "$conv" --from "$alice" --cmid "m2-$run_id" "hello 2"
if [[ $rc -eq 0 && "$(field seq)" == 2 && "$(field id)" == "${ids[2]}" ]]; then
    pass "same cmid again -> the same seq 2 and id"
else
    fail "same cmid again: want seq 2 id ${ids[2]}; $(why)"
fi
ctl history "$conv"
if [[ $rc -eq 0 && "$(lines)" == 3 && "$(column seq)" == "3 2 1" ]]; then
    pass "history after the resend still has 3 events"
else
    fail "history after the resend: $(why)"
fi

# ------------------------------------------------------------ paging
ctl history "$conv" --limit 2
if [[ $rc -eq 0 && "$(lines)" == 2 && "$(column seq)" == "3 2" ]]; then
    pass "history --limit 2 -> seq 3 2"
else
    fail "history --limit 2: $(why)"
fi
ctl history "$conv" --before 2
if [[ $rc -eq 0 && "$(lines)" == 1 && "$(column seq)" == 1 && "$(column body)" == "hello 1" ]]; then
    pass "history --before 2 -> seq 1"
else
    fail "history --before 2: $(why)"
fi
ctl history "$conv" --before 3 --limit 1
if [[ $rc -eq 0 && "$(column seq)" == 2 ]]; then
    pass "history --before 3 --limit 1 -> seq 2"
else
    fail "history --before 3 --limit 1: $(why)"
fi

# ------------------------------------------------------------ system posts by a backend (not a member)
ctl send "$conv" --from "bot-$run_id" --system --meta '{"source":"api_test"}' "a notice"
if [[ $rc -eq 0 && "$(field seq)" == 4 ]]; then
    pass "a system post by a non-member backend user -> seq 4"
else
    fail "system post: $(why)"
fi
ctl history "$conv" --limit 1
if [[ $rc -eq 0 && "$(field kind)" == system && "$(field source)" == api_test ]]; then
    pass "history shows it as kind system with its meta"
else
    fail "history of the system post: $(why)"
fi

# ------------------------------------------------------------ members
ctl conv add "$conv" "$carol" "$dave" "$alice"
if [[ $rc -eq 0 ]] && grep -Fq "\"added\":[\"$carol\",\"$dave\"]" "$tmp/out"; then
    pass "conv add -> added carol and dave (alice already a member)"
else
    fail "conv add: $(why)"
fi
ctl conv remove "$conv" "$dave" "nobody-$run_id"
if [[ $rc -eq 0 ]] && grep -Fq "\"removed\":[\"$dave\"]" "$tmp/out"; then
    pass "conv remove -> removed dave only"
else
    fail "conv remove: $(why)"
fi
ctl conv members "$conv"
if [[ $rc -eq 0 ]] && grep -Fq "\"members\":[\"$alice\",\"$bob\",\"$carol\"]" "$tmp/out"; then
    pass "conv members -> alice, bob, carol"
else
    fail "conv members: $(why)"
fi
ctl conv check "$conv" "$dave"
if [[ $rc -eq 0 && "$(field member)" == false ]]; then
    pass "conv check dave -> not a member"
else
    fail "conv check dave: $(why)"
fi

# ------------------------------------------------------------ history as a user
ctl history "$conv" --as "$carol" --limit 1
if [[ $rc -eq 0 && "$(lines)" == 1 ]]; then
    pass "history --as a member works"
else
    fail "history --as carol: $(why)"
fi
ctl history "$conv" --as "$dave"
if [[ $rc -eq 1 ]] && grep -q 'not_member' "$tmp/err"; then
    pass "history --as a non-member -> exit 1, not_member"
else
    fail "history --as dave: want exit 1 and not_member; $(why)"
fi

# ------------------------------------------------------------ unknown conversation
for cmd in "history nope-$run_id" "send nope-$run_id --from $alice hi" "conv add nope-$run_id $alice" \
    "conv members nope-$run_id" "conv delete nope-$run_id"; do
    # shellcheck disable=SC2086
    ctl $cmd
    if [[ $rc -eq 1 && "$(grep -c . "$tmp/err")" == 1 ]] && grep -q 'not_found: conversation not found' "$tmp/err"; then
        pass "chatctl ${cmd%% nope*} on an unknown conversation -> exit 1: $(cat "$tmp/err")"
    else
        fail "chatctl $cmd: want exit 1 and one line with not_found; $(why)"
    fi
done

# ------------------------------------------------------------ delete
ctl conv delete "$conv"
if [[ $rc -eq 0 ]]; then
    pass "conv delete"
else
    fail "conv delete: $(why)"
fi
ctl send "$conv" --from "$alice" "after delete"
if [[ $rc -eq 1 ]] && grep -q not_found "$tmp/err"; then
    pass "send to a deleted conversation -> not_found"
else
    fail "send after delete: $(why)"
fi
ctl conv create "$conv" "$alice"
if [[ $rc -eq 1 ]] && grep -q 'conversation was deleted' "$tmp/err"; then
    pass "conv create of a deleted conversation -> bad_request"
else
    fail "conv create after delete: $(why)"
fi
ctl history "$conv" --limit 10
if [[ $rc -eq 0 && "$(lines)" == 4 ]]; then
    pass "a backend still reads the history of a deleted conversation"
else
    fail "history after delete: $(why)"
fi

# ------------------------------------------------------------ usage errors
for cmd in "send $conv hi" "history" "conv create $conv" "conv frobnicate x" "history $conv --limit 500" "send a.b --from x hi"; do
    # shellcheck disable=SC2086
    ctl $cmd
    if [[ $rc -eq 2 ]]; then
        pass "chatctl $cmd -> exit 2"
    else
        fail "chatctl $cmd: want exit 2; $(why)"
    fi
done

finish api_test
