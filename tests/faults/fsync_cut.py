#!/usr/bin/env python3
"""What a power loss leaves of a nats-server store: the message blocks cut back to their last fsync.

    fsync_cut.py TRACE STORE_DIR [--dry-run]

TRACE is `strace -f -y -e trace=pwrite64,fsync,fdatasync,ftruncate` of the server (it writes its
message blocks, `*.blk`, with pwrite64 and syncs them with fsync). For every block under STORE_DIR
the trace wrote to, the synced length is the furthest end of the writes that completed before its
last successful fsync (0 when it was never synced: a block created since). Each block longer than
that is truncated to it, as the disk of a machine that lost power holds it; every other file is
left as written (the harsher case: stream and consumer state may be newer than the blocks).
Prints one line per block cut and a total line: `cut BYTES bytes of N blocks`.
"""
import os
import re
import sys

LINE = re.compile(r'^(pwrite64|fsync|fdatasync|ftruncate)\((\d+)<([^>]*)>(.*)$')
RESULT = re.compile(r'\)\s*=\s*(-?\d+)')
OFFSET = re.compile(r',\s*(\d+)\)\s*=\s*-?\d+')


def complete_calls(f):
    """Each call of the trace once it completed, as (call, path, text up to its result): a call that
    another thread's line interrupted (`<unfinished ...>`) counts where it resumed."""
    pending = {}
    for line in f:
        pid = line.split(None, 1)[0] if line[:1].isdigit() else ''
        rest = line[len(pid):].lstrip() if pid else line
        if rest.startswith('<... '):
            start = pending.pop(pid, None)
            if start is not None:
                yield start.rstrip() + rest.split('resumed>', 1)[-1]
            continue
        if rest.rstrip().endswith('<unfinished ...>'):
            pending[pid] = rest.rstrip()[:-len('<unfinished ...>')]
            continue
        yield rest


def synced_lengths(trace, store):
    written, synced = {}, {}
    with open(trace, errors='replace') as f:
        for line in complete_calls(f):
            m = LINE.match(line)
            if not m:
                continue
            call, _fd, path, rest = m.groups()
            if not path.startswith(store) or not path.endswith('.blk'):
                continue
            r = RESULT.search(rest)
            if not r or int(r.group(1)) < 0:
                continue  # failed, or unfinished (no result): it did not happen for the disk
            if call in ('fsync', 'fdatasync'):
                synced[path] = written.get(path, 0)
            elif call == 'pwrite64':
                o = OFFSET.search(rest)
                if o:
                    end = int(o.group(1)) + int(r.group(1))
                    written[path] = max(written.get(path, 0), end)
            else:  # ftruncate(fd, length)
                o = OFFSET.search(rest)
                if o:
                    written[path] = int(o.group(1))
                    synced[path] = min(synced.get(path, 0), written[path])
    return written, synced


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    trace, store = sys.argv[1], os.path.realpath(sys.argv[2])
    dry = '--dry-run' in sys.argv[3:]
    written, synced = synced_lengths(trace, store)
    total = blocks = 0
    for path in sorted(written):
        if not os.path.exists(path):
            continue
        size = os.path.getsize(path)
        keep = synced.get(path, 0)
        if size <= keep:
            continue
        print(f'{os.path.relpath(path, store)}: {size} -> {keep} bytes')
        if not dry:
            os.truncate(path, keep)
        total += size - keep
        blocks += 1
    print(f'cut {total} bytes of {blocks} blocks')
    return 0


if __name__ == '__main__':
    sys.exit(main())
