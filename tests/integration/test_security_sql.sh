#!/usr/bin/env bash
# SQL only through parameters: no value ever becomes part of an SQL text. A source check of
# workers/, common/ and tools/ (every C file that talks to PostgreSQL), in four rules:
#   1. no SQL text is formatted: a printf-family call (snprintf, sprintf, asprintf, chat_buf_printf,
#      ...) whose format string holds SQL (an upper-case keyword: SELECT, INSERT, UPDATE, DELETE,
#      ALTER, CREATE, DROP, LOCK, ...) and a conversion (%s, %d, ...) is refused, unless it is one
#      of the reviewed identifier sites below (a table or column name the code itself chose or
#      quoted with PQescapeIdentifier; PostgreSQL cannot take identifiers as parameters);
#   2. PQexec, PQsendQuery and wk_pg_exec (no parameters at all) take only a string literal or a
#      macro as their SQL, unless reviewed below (the migrations compiled into the binary);
#   3. no PQescapeLiteral / PQescapeString(Conn) / PQescapeBytea(Conn): values go as parameters;
#   4. no SQL text is concatenated (strcat, strcpy, stpcpy, chat_buf_append of an SQL literal).
# A self-test first runs the checker on a file with each kind of violation and on a clean one, so
# the check cannot silently pass by matching nothing. Exit 0 when clean, 1 with one line per
# violation (file:line, the rule, the code) otherwise.
#
#   test_security_sql.sh [SOURCE_DIR]      (default: $CHAT_TEST_SOURCE_DIR, else the checkout)
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
src=$(realpath -m -- "${1:-${CHAT_TEST_SOURCE_DIR:-$here/../..}}")

# Reviewed sites: FILE<TAB>RULE<TAB>TEXT<TAB>why. TEXT is the whole format string (rule 1) or the
# SQL argument expression (rule 2), exactly as in the source.
allow=$(cat <<'EOF'
wk_archive.c	formatted	UPDATE archive_partitions SET state = $2, %s = now(), last_error = NULL WHERE id = $1::bigint	%s is a column name from the code's own constants (set_state callers), never input
wk_archive_upkeep.c	formatted	LOCK TABLE %s IN SHARE MODE	%s is a partition's table name quoted with PQescapeIdentifier
wk_archive_upkeep.c	formatted	SELECT count(*) FROM %s	%s is a partition's table name quoted with PQescapeIdentifier
wk_archive_upkeep.c	formatted	ALTER TABLE messages DETACH PARTITION %s	%s is a partition's table name quoted with PQescapeIdentifier
wk_archive_upkeep.c	formatted	DROP TABLE %s	%s is a partition's table name quoted with PQescapeIdentifier
wk_archive_pass.c	formatted	FETCH %d FROM archive_rows	%d is the compile-time constant WK_ARCHIVE_FETCH_ROWS
wk_archive_upkeep.c	formatted	INSERT INTO archive_tombstones (conversation_id, target_seq, partition_id) SELECT conversation_id, target_seq, $1::bigint FROM %s WHERE kind = 'delete' AND target_seq IS NOT NULL ON CONFLICT DO NOTHING	%s is a partition's table name quoted with PQescapeIdentifier
wk_archive_upkeep.c	formatted	DELETE FROM message_dedupe d USING %s m WHERE d.conversation_id = m.conversation_id AND d.client_msg_id = m.client_msg_id AND d.seq = m.seq	%s is a partition's table name quoted with PQescapeIdentifier
wk_migrate.c	unparameterized	m->sql	the migration files, compiled into the binary at build time (cmake/embed_migrations.cmake)
wk_pg.c	unparameterized	sql	inside wk_pg_exec: its callers are checked by this same rule
EOF
)

checker=$(cat <<'PERL'
use strict;
use warnings;
my ($allow_text, @files) = @ARGV;
my %allow;
for my $line (split /\n/, $allow_text) {
    my ($file, $rule, $text) = split /\t/, $line;
    $allow{"$file\t$rule\t$text"} = 1 if defined $text;
}
my $kw = qr/\b(?:SELECT|INSERT|UPDATE|DELETE|ALTER|CREATE|DROP|LOCK|TRUNCATE|GRANT|REVOKE|COPY|VALUES|WHERE|FROM|SET|WITH)\b/;
my ($problems, $sites) = (0, 0);
for my $path (@files) {
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    my $code = <$fh>;
    close $fh;
    # comments out, strings and line numbers kept
    $code =~ s{(/\*.*?\*/)|(//[^\n]*)|("(?:\\.|[^"\\])*")|('(?:\\.|[^'\\])*')}{
        defined $1 ? ($1 =~ s/[^\n]/ /gr) : defined $2 ? (' ' x length $2) : ($3 // $4)
    }gse;
    (my $base = $path) =~ s{.*/}{};
    my $line_of = sub { my $pos = shift; return 1 + (substr($code, 0, $pos) =~ tr/\n//) };
    my $report = sub {
        my ($pos, $rule, $what) = @_;
        $what =~ s/\s+/ /g;
        printf "%s:%d: %s: %s\n", $path, $line_of->($pos), $rule, substr($what, 0, 200);
        $problems++;
    };
    # the argument list of the call whose "(" is at $open: text up to the matching ")"
    my $args_of = sub {
        my $open = shift;
        my ($depth, $i) = (0, $open);
        while ($i < length $code) {
            my $c = substr($code, $i, 1);
            if ($c eq '"') {
                my $rest = substr($code, $i);
                $rest =~ /^("(?:\\.|[^"\\])*")/s or last;
                $i += length $1;
                next;
            }
            $depth++ if $c eq '(';
            $depth-- if $c eq ')';
            return substr($code, $open + 1, $i - $open - 1) if $depth == 0;
            $i++;
        }
        return '';
    };
    # adjacent string literals at the start of $s, joined; undef when $s does not start with one
    my $literal = sub {
        my $s = shift;
        return undef unless $s =~ /^\s*"/;
        my $out = '';
        while ($s =~ /\G\s*"((?:\\.|[^"\\])*)"/gsc) { $out .= $1; }
        return $out;
    };
    # rule 1: formatted SQL
    while ($code =~ /\b(snprintf|sprintf|vsnprintf|vsprintf|asprintf|vasprintf|dprintf|fprintf|chat_buf_printf)\s*\(/g) {
        my ($fn, $pos) = ($1, $-[0]);
        my @args = split_args($args_of->($+[0] - 1));
        my $skip = $fn =~ /^(?:snprintf|vsnprintf)$/ ? 2 : 1;
        my $fmt = $literal->($args[$skip] // '');
        next unless defined $fmt;
        next unless $fmt =~ $kw;
        (my $conv = $fmt) =~ s/%%//g;
        next unless $conv =~ /%[-+ #0-9.*]*[a-zA-Z]/;
        $sites++;
        next if $allow{"$base\tformatted\t$fmt"};
        $report->($pos, "SQL formatted with $fn (put values in parameters \$1, \$2, ...)", $fmt);
    }
    # rule 2: unparameterized calls with a non-literal SQL
    while ($code =~ /\b(PQexec|PQsendQuery|wk_pg_exec)\s*\(/g) {
        my ($fn, $pos) = ($1, $-[0]);
        my $argtext = $args_of->($+[0] - 1);
        # a definition (wk_pg_exec's own), not a call: its callers are what is checked
        next if substr($code, $+[0] + length $argtext) =~ /^\)\s*\{/;
        my @args = split_args($argtext);
        my $sql = $args[1] // '';
        $sql =~ s/^\s+|\s+$//g;
        $sites++;
        next if defined $literal->($sql) || $sql =~ /^[A-Z][A-Z0-9_]*$/;
        next if $allow{"$base\tunparameterized\t$sql"};
        $report->($pos, "$fn with an SQL text that is not a literal (use PQexecParams with parameters)", "$fn(.., $sql, ..)");
    }
    # rule 3: escaping values into SQL
    while ($code =~ /\b(PQescapeLiteral|PQescapeStringConn|PQescapeString|PQescapeByteaConn|PQescapeBytea)\s*\(/g) {
        $report->($-[0], "$1 (values go as parameters, not escaped into the SQL text)", $1);
    }
    # rule 4: SQL concatenated
    while ($code =~ /\b(strcat|strncat|strcpy|stpcpy|strncpy|chat_buf_append|chat_buf_puts)\s*\(/g) {
        my ($fn, $pos) = ($1, $-[0]);
        my @args = split_args($args_of->($+[0] - 1));
        my $lit = $literal->($args[1] // '');
        next unless defined $lit && $lit =~ $kw;
        $report->($pos, "SQL text concatenated with $fn", $lit);
    }
}
print "checked ", scalar(@files), " files, $sites SQL text sites; $problems violation(s)\n";
exit($problems ? 1 : 0);

# splits a C argument list at top-level commas (strings and parentheses respected)
sub split_args {
    my $s = shift;
    my @out;
    my ($cur, $depth) = ('', 0);
    while ($s =~ /\G("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[(\[{]|[)\]}]|,|[^"'(\[{)\]},]+)/gsc) {
        my $t = $1;
        if ($t =~ /^[(\[{]$/) { $depth++; }
        elsif ($t =~ /^[)\]}]$/) { $depth--; }
        elsif ($t eq ',' && $depth == 0) { push @out, $cur; $cur = ''; next; }
        $cur .= $t;
    }
    push @out, $cur;
    return @out;
}
PERL
)

run_check() { perl -e "$checker" "$allow" "$@"; }

# ---------------------------------------------------------------- self-test
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
cat >"$tmp/bad.c" <<'C'
void f(PGconn *pg, const char *user, const char *conv)
{
    char q[256];
    snprintf(q, sizeof q, "SELECT * FROM messages WHERE sender_id = '%s'", user);
    PGresult *r = PQexec(pg, q);
    chat_buf_printf(&b, "DELETE FROM conversations"
                        " WHERE id = '%s'", conv);
    char *lit = PQescapeLiteral(pg, user, strlen(user));
    strcat(q, "UPDATE conversations SET last_seq = 0");
    wk_pg_exec(pg, q, PGRES_COMMAND_OK, "x");
}
C
cat >"$tmp/good.c" <<'C'
/* snprintf(q, sizeof q, "SELECT %s", x); in a comment is no code */
#define SQL_X "SELECT 1"
void g(PGconn *pg, const char *user)
{
    const char *params[] = {user};
    PGresult *r = PQexecParams(pg, "SELECT * FROM messages WHERE sender_id = $1", 1, NULL, params, NULL, NULL, 0);
    PQexec(pg, "BEGIN");
    PQexec(pg, SQL_X);
    wk_pg_exec(pg, "SET statement_timeout = '5s'", PGRES_COMMAND_OK, "t");
    snprintf(msg, sizeof msg, "cannot read %s from the store", user);
    LOG_ERROR("x", "event=sql_failed detail=\"%s\"", user);
}
C
out=$(run_check "$tmp/bad.c" || true)
n=$(grep -c ': ' <<<"$out" | tr -d ' ')
if [[ "$(grep -c 'bad.c:' <<<"$out")" -ne 6 ]]; then
    printf '%s\n' "$out"
    echo "FAIL: the checker's self-test: want 6 violations in the bad file (lines 4, 5, 6, 8, 9, 10), got the above"
    exit 1
fi
for want in 'bad.c:4: SQL formatted with snprintf' 'bad.c:5: PQexec with an SQL text' 'bad.c:6: SQL formatted with chat_buf_printf' \
            'bad.c:8: PQescapeLiteral' 'bad.c:9: SQL text concatenated with strcat' 'bad.c:10: wk_pg_exec with an SQL text'; do
    grep -qF "$want" <<<"$out" || { printf '%s\n' "$out"; echo "FAIL: self-test: missing '$want'"; exit 1; }
done
if ! good=$(run_check "$tmp/good.c"); then
    printf '%s\n' "$good"
    echo "FAIL: the checker's self-test: the clean file was flagged"
    exit 1
fi
echo "PASS: the checker finds each kind of violation ($n lines) and passes a clean file"

# ---------------------------------------------------------------- the tree
mapfile -t files < <(find "$src/workers" "$src/common" "$src/tools" -name '*.c' -print | sort)
((${#files[@]} > 0)) || { echo "FAIL: no C files under $src/workers, common, tools"; exit 1; }
if result=$(run_check "${files[@]}"); then
    printf '%s\n' "$result"
    echo "PASS: SQL text only from literals (and reviewed identifiers); values only through parameters"
else
    printf '%s\n' "$result"
    echo "FAIL: SQL built from values (see the lines above; use PQexecParams with \$1, \$2, ..., or, for an identifier quoted with PQescapeIdentifier, add a reviewed line to the allow list in $0)"
    exit 1
fi
