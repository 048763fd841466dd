// The SDK (web/sdk/chat.js) in Node against a scripted fake server: ordering, repeats, gap fill,
// sync cursors, the outbox's retries, backoff, token refresh, typing throttle, ping. Needs no stack.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChatClient, decodeToken } from '../../web/sdk/chat.js';

function b64url(obj) {
  return Buffer.from(JSON.stringify(obj)).toString('base64url');
}

function jwt(sub, expInSeconds = 3600) {
  return `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub, exp: Math.floor(Date.now() / 1000) + expInSeconds })}.sig`;
}

/** A fake network: every `new WebSocket(url)` of the client lands here. */
class FakeNet {
  constructor() {
    this.sockets = [];
    this.refuse = false;
    this.autoHello = true;
    this.frames = []; // [{ws, frame}]
    this.handlers = [];
    const net = this;
    this.WebSocket = class FakeWS {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        net.sockets.push(this);
        setTimeout(() => {
          if (net.refuse) {
            this.readyState = 3;
            if (this.onclose) this.onclose({ code: 1006 });
            return;
          }
          this.readyState = 1;
          if (this.onopen) this.onopen();
          if (net.autoHello) this.push({ type: 'hello', user: decodeToken(new URL(url).searchParams.get('token')).sub, session: `s${net.sockets.length}`, server_time: Date.now() });
        }, 1);
      }
      send(data) {
        const f = JSON.parse(data);
        this.sent.push(f);
        net.frames.push({ ws: this, frame: f });
        for (const h of net.handlers) h(this, f);
      }
      close() {
        if (this.readyState === 3) return;
        this.readyState = 3;
        setTimeout(() => this.onclose && this.onclose({ code: 1000 }), 1);
      }
      /** server -> client */
      push(frame) {
        if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(frame) });
      }
      /** the connection breaks */
      drop() {
        this.readyState = 3;
        if (this.onclose) this.onclose({ code: 1006 });
      }
    };
  }
  get ws() {
    return this.sockets[this.sockets.length - 1];
  }
  on(fn) {
    this.handlers.push(fn);
  }
  sent(type) {
    return this.frames.filter((x) => x.frame.type === type).map((x) => x.frame);
  }
}

async function until(what, fn, timeout = 5000) {
  const end = Date.now() + timeout;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function client(net, opts = {}) {
  return new ChatClient({
    url: 'ws://fake/ws',
    token: jwt('ann'),
    WebSocket: net.WebSocket,
    indexedDB: null,
    window: null,
    backoff: { initial: 10, max: 40 },
    logger: process.env.SDK_DEBUG ? (...a) => console.log('[sdk]', ...a) : null,
    seenDelay: 5,
    ...opts,
  });
}

let nextId = 0;
function msg(conv, seq, extra = {}) {
  return { type: 'msg', conv, seq, id: extra.id || `id-${conv}-${seq}-${nextId++}`, cmid: `k${seq}`, from: 'bob', ts: Date.now(), kind: 'text', body: `m${seq}`, ...extra };
}

test('events are handed on once, in seq order per conversation; repeats are dropped', async () => {
  const net = new FakeNet();
  const c = client(net);
  const got = [];
  c.on('message', (m) => got.push(`${m.conv}:${m.seq}`));
  net.on((ws, f) => {
    if (f.type !== 'sync') return;
    const m2 = msg('a', 2);
    ws.push(m2);
    ws.push(msg('b', 7)); // a conversation the client has no cursor for: it starts at 7
    ws.push(msg('a', 1));
    ws.push(m2); // the same event again (at-least-once)
    ws.push({ ...msg('a', 2), id: m2.id }); // again
    ws.push(msg('a', 3));
    ws.push(msg('b', 8));
    ws.push({ type: 'synced' });
  });
  await c.connect();
  assert.deepEqual(net.sent('sync')[0].cursors, {});
  assert.deepEqual(got, ['a:1', 'a:2', 'a:3', 'b:7', 'b:8']);
  assert.equal(c.cursor('a'), 3);
  assert.equal(c.cursor('b'), 8);
  // repeats after the fact are dropped too
  net.ws.push(msg('a', 3));
  net.ws.push(msg('a', 1));
  assert.equal(got.length, 5);
  // seen went out for what was handed on
  await until('seen frames', () => net.sent('seen').length >= 2);
  assert.deepEqual(net.sent('seen').map((f) => `${f.conv}:${f.seq}`).sort(), ['a:3', 'b:8']);
  c.close();
});

test('a gap is filled through history before the events after it are handed on', async () => {
  const net = new FakeNet();
  const c = client(net);
  const got = [];
  c.on('message', (m) => got.push(`${m.seq}/${m.source}`));
  net.on((ws, f) => {
    if (f.type === 'sync') {
      ws.push(msg('a', 1));
      ws.push({ type: 'synced' });
    } else if (f.type === 'history') {
      // newest first, as the server answers
      ws.push({ type: 'history', ref: f.ref, conv: f.conv, messages: [msg('a', 4), msg('a', 3), msg('a', 2)].map(({ type, ...m }) => ({ type: 'msg', ...m })), more: true });
    }
  });
  await c.connect();
  net.ws.push(msg('a', 5)); // 2..4 are missing
  net.ws.push(msg('a', 6));
  await until('gap filled', () => got.length === 6);
  assert.deepEqual(got, ['1/sync', '2/history', '3/history', '4/history', '5/live', '6/live']);
  const h = net.sent('history')[0];
  assert.equal(h.conv, 'a');
  assert.equal(h.before, 5);
  assert.equal(h.limit, 3);
  c.close();
});

test('every reconnect syncs from the cursors kept; the state events tell the app', async () => {
  const net = new FakeNet();
  const c = client(net);
  const states = [];
  c.on('state', (s) => states.push(s.state));
  let round = 0;
  net.on((ws, f) => {
    if (f.type !== 'sync') return;
    round++;
    if (round === 1) {
      ws.push(msg('a', 1));
      ws.push(msg('a', 2));
      ws.push(msg('z', 40));
    } else {
      ws.push(msg('a', 3));
    }
    ws.push({ type: 'synced' });
  });
  await c.connect();
  net.ws.drop();
  await until('second sync', () => round === 2 && c.state === 'ready');
  assert.deepEqual(net.sent('sync')[1].cursors, { a: 2, z: 40 });
  assert.equal(c.cursor('a'), 3);
  assert.deepEqual(states.slice(0, 3), ['connecting', 'syncing', 'ready']);
  assert.ok(states.includes('reconnecting'));
  c.close();
  assert.equal(c.state, 'closed');
});

test('the outbox sends with one cmid until acked: after error unavailable and after a reconnect', async () => {
  const net = new FakeNet();
  net.refuse = true;
  const c = client(net);
  const acks = [];
  c.on('ack', (a) => acks.push(a));
  c.connect();
  const item = c.send('a', 'hello', { x: 1 });
  assert.match(item.cmid, /^[A-Za-z0-9_-]{1,64}$/);
  assert.equal(c.pending().length, 1);
  await sleep(50);
  assert.equal(net.sent('send').length, 0, 'nothing goes out while offline');

  let sends = 0;
  net.on((ws, f) => {
    if (f.type === 'sync') ws.push({ type: 'synced' });
    if (f.type !== 'send') return;
    sends++;
    if (sends === 1) ws.push({ type: 'error', code: 'unavailable', message: 'retry with the same cmid', ref: f.cmid });
    else if (sends === 2) ws.drop(); // lost before the answer
    else ws.push({ type: 'ack', conv: f.conv, cmid: f.cmid, seq: 9, id: 'X9' });
  });
  net.refuse = false;
  const ack = await item.done;
  assert.deepEqual(ack, { conv: 'a', cmid: item.cmid, seq: 9, id: 'X9', kind: 'text' });
  const frames = net.sent('send');
  assert.equal(frames.length, 3);
  for (const f of frames) assert.deepEqual(f, { type: 'send', conv: 'a', cmid: item.cmid, body: 'hello', meta: { x: 1 } });
  assert.equal(c.pending().length, 0);
  assert.equal(acks.length, 1);
  // the same event echoed later is not a second ack
  net.ws.push({ ...msg('a', 9), from: 'ann', cmid: item.cmid });
  assert.equal(acks.length, 1);
  c.close();
});

test('an event of our own acks its outbox item when the ack was lost', async () => {
  const net = new FakeNet();
  const c = client(net);
  net.on((ws, f) => {
    if (f.type === 'sync') ws.push({ type: 'synced' });
    if (f.type === 'send') ws.push({ ...msg(f.conv, 1), from: 'ann', cmid: f.cmid, body: f.body });
  });
  await c.connect();
  const item = c.send('a', 'x');
  const ack = await item.done;
  assert.equal(ack.seq, 1);
  assert.equal(c.pending().length, 0);
  c.close();
});

test('a refusal that a retry cannot fix fails the item', async () => {
  const net = new FakeNet();
  const c = client(net);
  const failed = [];
  c.on('failed', (f) => failed.push(f.code));
  net.on((ws, f) => {
    if (f.type === 'sync') ws.push({ type: 'synced' });
    if (f.type === 'edit') ws.push({ type: 'error', code: 'not_member', message: 'not a member of this conversation', ref: f.cmid });
  });
  await c.connect();
  const item = c.edit('a', 3, 'new text');
  await assert.rejects(item.done, (err) => err.code === 'not_member');
  assert.deepEqual(failed, ['not_member']);
  assert.equal(c.pending().length, 0);
  assert.throws(() => c.send('bad conv!', 'x'), TypeError);
  assert.throws(() => c.send('a', 'x'.repeat(16 * 1024 + 1)), RangeError);
  c.close();
});

test('reconnects back off exponentially with jitter, within the cap', async () => {
  const net = new FakeNet();
  net.refuse = true;
  const c = client(net, { backoff: { initial: 4, max: 32, factor: 2 } });
  const delays = [];
  c.on('state', (s) => {
    if (s.state === 'reconnecting') delays.push([s.attempt, s.delay]);
  });
  c.connect();
  await until('eight attempts', () => delays.length >= 8, 10000);
  delays.forEach(([attempt, delay]) => {
    const cap = Math.min(32, 4 * 2 ** (attempt - 1));
    assert.ok(delay <= cap && delay >= cap * 0.1 - 1, `attempt ${attempt}: ${delay} ms within [${cap * 0.1}, ${cap}]`);
  });
  // then it connects, and the next loss starts over from the first step
  net.on((ws, f) => f.type === 'sync' && ws.push({ type: 'synced' }));
  net.refuse = false;
  await c.ready();
  delays.length = 0;
  net.ws.drop();
  await until('a reconnect', () => delays.length >= 1);
  assert.equal(delays[0][0], 1);
  assert.ok(delays[0][1] <= 4);
  c.close();
});

test('the token is refreshed through getToken before it expires and used for the next connection', async () => {
  const net = new FakeNet();
  let calls = 0;
  const fresh = jwt('ann', 3600);
  const c = client(net, {
    token: jwt('ann', 2), // expires in 2 s
    getToken: async () => {
      calls++;
      return fresh;
    },
  });
  const tokens = [];
  c.on('token', () => tokens.push(c.token));
  net.on((ws, f) => f.type === 'sync' && ws.push({ type: 'synced' }));
  await c.connect();
  assert.equal(calls, 1, 'a token with less than 30 s left is refreshed before connecting');
  assert.equal(new URL(net.ws.url).searchParams.get('token'), fresh);

  // a token of the app's that runs out while connected
  const c2 = client(net, { token: jwt('ann', 2), refreshBefore: 1, getToken: async () => fresh });
  c2._tokenForConnect = async () => c2.token; // connect with the short one
  await c2.connect();
  const old = new URL(net.ws.url).searchParams.get('token');
  assert.notEqual(old, fresh);
  await until('refreshed before exp', () => c2.token === fresh, 4000);
  net.ws.drop();
  await until('reconnected', () => c2.state === 'ready' && new URL(net.ws.url).searchParams.get('token') === fresh);
  c.close();
  c2.close();
});

test('typing is throttled, read only moves forward, presence is asked again after a reconnect', async () => {
  const net = new FakeNet();
  const c = client(net, { typingInterval: 200 });
  net.on((ws, f) => {
    if (f.type === 'sync') {
      ws.push(msg('a', 1));
      ws.push(msg('a', 2));
      ws.push({ type: 'synced' });
    }
    if (f.type === 'presence') ws.push({ type: 'presence', users: Object.fromEntries(f.users.map((u) => [u, { online: true, last_seen: 1 }])) });
  });
  await c.connect();
  assert.equal(c.typing('a'), true);
  assert.equal(c.typing('a'), false);
  assert.equal(c.typing('b'), true);
  await sleep(220);
  assert.equal(c.typing('a'), true);
  assert.equal(net.sent('typing').length, 3);

  c.read('a');
  c.read('a', 1);
  c.read('a', 2);
  assert.deepEqual(net.sent('read'), [{ type: 'read', conv: 'a', seq: 2 }]);

  const p = await c.presence(['bob', 'cat']);
  assert.deepEqual(Object.keys(p).sort(), ['bob', 'cat']);
  net.ws.drop();
  await until('presence again', () => net.sent('presence').length === 2 && c.state === 'ready');
  assert.deepEqual(net.sent('presence')[1].users.sort(), ['bob', 'cat']);
  c.close();
});

test('a silent connection is dropped after the ping timeout and replaced', async () => {
  const net = new FakeNet();
  const c = client(net, { pingInterval: 40, pingTimeout: 80 });
  let syncs = 0;
  net.on((ws, f) => {
    if (f.type === 'sync') {
      syncs++;
      ws.push({ type: 'synced' });
    }
    // pings go unanswered: a half-open connection
  });
  await c.connect();
  await until('a ping', () => net.sent('ping').length >= 1, 2000);
  await until('a new connection', () => syncs >= 2, 3000);
  c.close();
});

test('without a token, getToken is asked again (with backoff) until it answers', async () => {
  const net = new FakeNet();
  let calls = 0;
  const c = client(net, {
    token: undefined,
    getToken: async () => {
      if (++calls < 3) throw new Error('token service down');
      return jwt('ann');
    },
  });
  net.on((ws, f) => f.type === 'sync' && ws.push({ type: 'synced' }));
  c.send('a', 'queued before any token');
  await c.connect();
  assert.equal(calls, 3);
  assert.equal(c.user, 'ann');
  await until('the queued message went out', () => net.sent('send').length === 1);
  c.close();
});

test('a sync the server stops is sent again', async () => {
  const net = new FakeNet();
  const c = client(net);
  let syncs = 0;
  net.on((ws, f) => {
    if (f.type !== 'sync') return;
    if (++syncs === 1) ws.push({ type: 'error', code: 'unavailable', message: 'sync stopped; send it again with your cursors' });
    else ws.push({ type: 'synced' });
  });
  await c.connect();
  assert.equal(syncs, 2);
  assert.equal(net.sockets.length, 1, 'on the same connection');
  c.close();
});
