// chat.js: the browser SDK of the chat platform (client WebSocket protocol, version 1).
// A plain ES module: no build step, no dependencies. Types: chat.d.ts beside it; guide: docs/sdk.md.
//
//   import { ChatClient } from '/sdk/chat.js';
//   const chat = new ChatClient({ getToken: async () => (await (await fetch('/dev/token?user=ann')).json()).token });
//   chat.on('message', (m) => console.log(m.conv, m.seq, m.from, m.body));
//   await chat.connect();
//   chat.send('team', 'hello');
//
// What it does for the app:
// - one WebSocket, reconnected with exponential backoff and full jitter; a token refreshed through
//   getToken() before its `exp` (read from the JWT's payload; sent on the live connection as an
//   `auth` frame, which the server closes at the old token's exp otherwise: 4003) and after
//   refused connections;
// - on every (re)connect a `sync` from the cursors it keeps (per conversation: the highest seq it
//   handed on with nothing missing below it), persisted in IndexedDB; whatever closed the socket
//   (1001 server going away, 1012 service restart, 4008 slow consumer, the network);
// - events handed on exactly once and in `seq` order per conversation: repeated ids are dropped,
//   early ones are held back, and a gap is filled through `history` first;
// - sends (and edits, deletes, reactions) get a client id (cmid) and wait in an outbox kept in
//   IndexedDB (so they survive a reload) until acked; they are sent again with the same cmid on
//   every reconnect, after `error unavailable` and when no answer came in time (the server stores
//   one message per cmid);
// - `seen` as events are handed on, `read`, `typing` (throttled), `presence`, `history`,
//   `conversations`.

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_BODY_BYTES = 16 * 1024;
const PERMANENT_ERRORS = new Set(['not_member', 'too_large', 'bad_request', 'not_found']);
const RETRY_ERRORS = new Set(['unavailable', 'rate_limited']);

const DEFAULTS = {
  url: null,
  token: null,
  getToken: null,
  persist: true,
  dbName: 'chat-sdk',
  autoSeen: true,
  seenDelay: 250,
  typingInterval: 3000,
  backoff: { initial: 500, max: 30000, factor: 2 },
  helloTimeout: 10000,
  pingInterval: 15000,
  pingTimeout: 10000,
  ackTimeout: 15000,
  requestTimeout: 15000,
  refreshBefore: 60,
  historyPage: 100,
  WebSocket: null,
  indexedDB: undefined,
  window: undefined,
  logger: null,
};

/** The payload of a JWT (no signature check: the server does that), or null. */
export function decodeToken(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    let b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === 'object' ? payload : null;
  } catch {
    return null;
  }
}

/** A new client message id: time, then 64 random bits; [A-Za-z0-9-], 24-26 characters. */
export function newCmid() {
  const rnd = new Uint8Array(8);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(rnd);
  else for (let i = 0; i < rnd.length; i++) rnd[i] = Math.floor(Math.random() * 256);
  let r = '';
  for (const b of rnd) r += b.toString(16).padStart(2, '0');
  return `${Date.now().toString(36)}-${r}`;
}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** An error of the protocol ({"type":"error"}): `code` is the server's code. */
export class ChatError extends Error {
  constructor(code, message, ref) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'ChatError';
    this.code = code;
    this.ref = ref;
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: IndexedDB (one database per user, stores `outbox` and `cursors`), or memory.
// ---------------------------------------------------------------------------------------------

class MemoryStore {
  constructor() {
    this.outbox = new Map();
    this.cursors = new Map();
  }
  async load() {
    return { outbox: [...this.outbox.values()], cursors: [...this.cursors.entries()] };
  }
  async putItem(rec) {
    this.outbox.set(rec.cmid, rec);
  }
  async deleteItem(cmid) {
    this.outbox.delete(cmid);
  }
  async putCursors(entries) {
    for (const [conv, seq] of entries) this.cursors.set(conv, seq);
  }
  close() {}
}

class IdbStore {
  constructor(idb, name) {
    this.idb = idb;
    this.name = name;
    this.db = null;
  }
  open() {
    if (this.db) return Promise.resolve(this.db);
    return new Promise((resolve, reject) => {
      const rq = this.idb.open(this.name, 1);
      rq.onupgradeneeded = () => {
        const db = rq.result;
        if (!db.objectStoreNames.contains('outbox')) db.createObjectStore('outbox', { keyPath: 'cmid' });
        if (!db.objectStoreNames.contains('cursors')) db.createObjectStore('cursors', { keyPath: 'conv' });
      };
      rq.onsuccess = () => {
        this.db = rq.result;
        this.db.onversionchange = () => {
          this.db.close();
          this.db = null;
        };
        resolve(this.db);
      };
      rq.onerror = () => reject(rq.error);
      rq.onblocked = () => reject(new Error('IndexedDB open blocked'));
    });
  }
  async tx(stores, mode, fn) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const t = db.transaction(stores, mode);
      let result;
      t.oncomplete = () => resolve(result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error || new Error('IndexedDB transaction aborted'));
      result = fn(t);
    });
  }
  async load() {
    let outbox = [], cursors = [];
    await this.tx(['outbox', 'cursors'], 'readonly', (t) => {
      const a = t.objectStore('outbox').getAll();
      a.onsuccess = () => { outbox = a.result; };
      const b = t.objectStore('cursors').getAll();
      b.onsuccess = () => { cursors = b.result.map((r) => [r.conv, r.seq]); };
    });
    outbox.sort((x, y) => x.createdAt - y.createdAt || (x.order || 0) - (y.order || 0));
    return { outbox, cursors };
  }
  putItem(rec) {
    return this.tx(['outbox'], 'readwrite', (t) => { t.objectStore('outbox').put(rec); });
  }
  deleteItem(cmid) {
    return this.tx(['outbox'], 'readwrite', (t) => { t.objectStore('outbox').delete(cmid); });
  }
  putCursors(entries) {
    return this.tx(['cursors'], 'readwrite', (t) => {
      const s = t.objectStore('cursors');
      for (const [conv, seq] of entries) s.put({ conv, seq });
    });
  }
  close() {
    if (this.db) this.db.close();
    this.db = null;
  }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

export class ChatClient {
  /** @param {import('./chat').ChatOptions} options */
  constructor(options = {}) {
    this.opts = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    const win = this.opts.window !== undefined ? this.opts.window : globalThis.window;
    this._win = win || null;
    if (!this.opts.url) {
      const loc = globalThis.location;
      if (!loc) throw new TypeError('ChatClient: options.url is required outside a browser page');
      this.opts.url = `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
    }
    this._WS = this.opts.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError('ChatClient: no WebSocket implementation (options.WebSocket)');
    if (!this.opts.token && !this.opts.getToken) throw new TypeError('ChatClient: options.token or options.getToken is required');

    this.token = this.opts.token || null;
    this.user = null;           // from the token's `sub`, then the server's hello
    this.session = null;        // the server's session id of the current connection
    this.state = 'idle';        // idle | connecting | syncing | ready | reconnecting | closed
    this.serverTimeOffset = 0;  // server_time - Date.now() at the last hello

    this._listeners = new Map();
    this._ws = null;
    this._helloed = false;
    this._closed = false;
    this._attempt = 0;
    this._failuresBeforeHello = 0;
    this._timers = { reconnect: null, hello: null, ping: null, tick: null, refresh: null, seen: null, cursors: null, resync: null };
    this._lastFrameAt = 0;
    this._pingSentAt = 0;
    this._syncing = false;
    this._syncFailures = 0;

    this._convs = new Map();     // conv -> { cursor, buffer: Map(seq -> ev), filling, fillRetry }
    this._seenIds = new Set();   // ids handed on recently (bounded), to drop repeats by id
    this._dirtyCursors = new Set();
    this._pendingSeen = new Map();
    this._lastSeenSent = new Map();
    this._readWanted = new Map();
    this._readSent = new Map();
    this._typingAt = new Map();
    this._receipts = new Map();  // conv -> Map(user -> {read, seen})
    this._presence = new Map();  // user -> {online, last_seen}
    this._watched = new Set();   // users whose presence the app asked for

    this._outbox = new Map();    // cmid -> item (insertion order = send order)
    this._order = 0;
    this._requests = new Map();  // history ref -> {resolve, reject, timer}
    this._convWaiters = [];      // conversations() waiters, FIFO
    this._presenceWaiters = [];  // presence() waiters, FIFO
    this._readyWaiters = [];
    this._ref = 0;

    this._store = new MemoryStore(); // replaced by IndexedDB once the user is known
    this._loaded = null;         // promise: storage loaded
    this._connectStarted = false;

    this._onOnline = () => this._networkOnline();
    this._onOffline = () => this._networkOffline();
    this._onPageHide = () => this._flushCursors();
  }

  // ------------------------------------------------------------------ events

  /** Subscribes to an event; returns a function that unsubscribes. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) set.delete(fn);
  }

  _emit(name, payload) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        this._log('listener of', name, 'threw', err);
      }
    }
  }

  _log(...args) {
    if (this.opts.logger) this.opts.logger(...args);
  }

  _setState(state, extra = {}) {
    if (this.state === state && !extra.force) return;
    const previous = this.state;
    this.state = state;
    const { force, ...rest } = extra;
    this._emit('state', { state, previous, ...rest });
    if (state === 'ready') {
      const w = this._readyWaiters;
      this._readyWaiters = [];
      for (const d of w) d.resolve();
    }
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * Loads the outbox and cursors from storage and starts connecting (and reconnecting for as long
   * as the client is not closed). Resolves when the first sync is done (state `ready`).
   */
  connect() {
    if (this._closed) return Promise.reject(new Error('ChatClient: closed'));
    if (!this._connectStarted) {
      this._connectStarted = true;
      this._loaded = this._init();
      this._loaded.then(
        () => this._open(),
        (err) => this._log('not connecting:', err),
      );
    }
    return this.ready();
  }

  /** Resolves when the client is (or next becomes) `ready`. */
  ready() {
    if (this.state === 'ready') return Promise.resolve();
    const d = deferred();
    this._readyWaiters.push(d);
    return d.promise;
  }

  /** Closes the connection for good (the outbox stays in storage for the next client). */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._flushCursors();
    this._teardown('closed by the app');
    for (const k of Object.keys(this._timers)) this._clearTimer(k);
    if (this._win && this._win.removeEventListener) {
      this._win.removeEventListener('online', this._onOnline);
      this._win.removeEventListener('offline', this._onOffline);
      this._win.removeEventListener('pagehide', this._onPageHide);
    }
    this._setState('closed');
    const err = new Error('ChatClient: closed');
    for (const d of this._readyWaiters) d.reject(err);
    this._readyWaiters = [];
    if (this._store) this._store.close();
  }

  /** Drops the current connection and connects again now (the backoff starts over). */
  reconnect() {
    if (this._closed || !this._connectStarted) return;
    this._attempt = 0;
    this._teardown('reconnect asked');
    this._clearTimer('reconnect');
    this._loaded.finally(() => this._open());
  }

  async _init() {
    // Without a token there is no user (and no storage of theirs): ask until getToken answers.
    while (!this.token && !this._closed) {
      try {
        this.token = await this._fetchToken();
      } catch (err) {
        this._log('getToken failed', err);
        const delay = this._backoffDelay();
        this._attempt++;
        this._setState('reconnecting', { delay, attempt: this._attempt });
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
    if (this._closed) throw new Error('ChatClient: closed');
    const payload = decodeToken(this.token);
    this.user = payload && typeof payload.sub === 'string' ? payload.sub : null;
    const idb = this.opts.indexedDB !== undefined ? this.opts.indexedDB : globalThis.indexedDB;
    if (this.opts.persist && idb && this.user) this._store = new IdbStore(idb, `${this.opts.dbName}:${this.user}`);
    if (this._win && this._win.addEventListener) {
      this._win.addEventListener('online', this._onOnline);
      this._win.addEventListener('offline', this._onOffline);
      this._win.addEventListener('pagehide', this._onPageHide);
    }
    let loaded;
    try {
      loaded = await this._store.load();
    } catch (err) {
      this._log('loading storage failed; going on in memory', err);
      this._store = new MemoryStore();
      loaded = { outbox: [], cursors: [] };
    }
    for (const [conv, seq] of loaded.cursors) {
      const c = this._conv(conv);
      if (c.cursor === undefined || seq > c.cursor) c.cursor = seq;
    }
    // Items of an earlier page go first, then any the app queued while loading.
    const current = [...this._outbox.values()];
    this._outbox = new Map();
    for (const rec of loaded.outbox) {
      if (rec.user && this.user && rec.user !== this.user) continue;
      const item = this._itemFromRecord(rec);
      this._outbox.set(item.cmid, item);
    }
    for (const item of current) if (!this._outbox.has(item.cmid)) this._outbox.set(item.cmid, item);
    for (const item of this._outbox.values()) this._emit('outbox', { item: this._publicItem(item), status: 'queued' });
    this._startTick();
    this._scheduleRefresh();
  }

  // ------------------------------------------------------------------ tokens

  async _fetchToken() {
    if (!this.opts.getToken) return this.token;
    const t = await this.opts.getToken();
    if (typeof t !== 'string' || !t) throw new Error('getToken() must return a JWT string');
    return t;
  }

  _tokenExp() {
    const p = decodeToken(this.token);
    return p && typeof p.exp === 'number' ? p.exp : null;
  }

  _scheduleRefresh() {
    this._clearTimer('refresh');
    if (!this.opts.getToken || this._closed) return;
    const exp = this._tokenExp();
    if (exp === null) return;
    const now = Date.now() / 1000;
    const life = exp - now;
    // Refresh `refreshBefore` seconds ahead, or at 80% of a short lifetime; at least in 1 s.
    const lead = Math.min(this.opts.refreshBefore, Math.max(1, life * 0.2));
    const delayMs = Math.max(1000, (life - lead) * 1000);
    // setTimeout holds at most ~24.8 days.
    this._timers.refresh = setTimeout(() => this._refreshToken().catch(() => {}), Math.min(delayMs, 2 ** 31 - 1));
  }

  async _refreshToken() {
    try {
      const t = await this._fetchToken();
      if (t && t !== this.token) {
        this.token = t;
        this._emit('token', { exp: this._tokenExp() });
        // the live connection ends at its token's exp (close 4003) unless it gets the new one
        if (this._helloed) this._sendFrame({ type: 'auth', token: t });
      }
    } catch (err) {
      this._log('getToken failed', err);
      this._clearTimer('refresh');
      if (!this._closed) this._timers.refresh = setTimeout(() => this._refreshToken().catch(() => {}), 5000);
      throw err;
    }
    this._scheduleRefresh();
  }

  async _tokenForConnect() {
    const exp = this._tokenExp();
    const soon = exp !== null && exp - Date.now() / 1000 < 30;
    // A token about to expire, or connections refused twice in a row before the hello (an HTTP
    // 401 looks like any failed connection to a browser; then every third failure), get a new
    // token first.
    if (this.opts.getToken && (soon || this._failuresBeforeHello % 3 === 2 || !this.token)) {
      try {
        await this._refreshToken();
      } catch {
        /* keep the old one; the backoff goes on */
      }
    }
    return this.token;
  }

  // ------------------------------------------------------------------ connection

  async _open() {
    if (this._closed || this._ws) return;
    this._clearTimer('reconnect');
    this._setState('connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._tokenForConnect();
    } catch {
      token = this.token;
    }
    if (this._closed || this._ws) return;
    const sep = this.opts.url.includes('?') ? '&' : '?';
    let ws;
    try {
      ws = new this._WS(`${this.opts.url}${sep}token=${encodeURIComponent(token || '')}`);
    } catch (err) {
      this._log('WebSocket constructor failed', err);
      this._failuresBeforeHello++;
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._helloed = false;
    this._syncing = false;
    ws.onmessage = (e) => {
      if (this._ws === ws) this._onRaw(e.data);
    };
    ws.onclose = (e) => {
      if (this._ws === ws) this._onSocketGone(`closed (${e && e.code})`, e && e.code);
    };
    ws.onerror = () => {
      /* onclose follows */
    };
    this._clearTimer('hello');
    this._timers.hello = setTimeout(() => {
      if (this._ws === ws && !this._helloed) this._onSocketGone('no hello in time');
    }, this.opts.helloTimeout);
  }

  /**
   * The socket is gone (or given up on): clean up and plan the next attempt. Whatever the close
   * code, the next connection syncs from the cursors (docs/protocol.md, Close codes); 1001 (the
   * gateway stops) and 1012 (the gateway lost live deliveries: sync) are the server asking for
   * exactly that, so they start the backoff over (with its jitter: a gateway's clients do not all
   * come back at once).
   */
  _onSocketGone(reason, code) {
    const hadHello = this._helloed;
    this._teardown(reason);
    if (!hadHello) this._failuresBeforeHello++;
    else if (code === 1001 || code === 1012) this._attempt = 0;
    this._log('connection lost:', reason);
    if (!this._closed) this._scheduleReconnect(code);
  }

  /** Drops the socket without waiting for a close handshake; fails what waited on it. */
  _teardown(reason) {
    const ws = this._ws;
    this._ws = null;
    this._helloed = false;
    this._syncing = false;
    this.session = null;
    this._clearTimer('hello');
    this._clearTimer('ping');
    this._clearTimer('resync');
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    }
    for (const item of this._outbox.values()) item.sentAt = 0;
    for (const c of this._convs.values()) c.filling = false;
    const err = new ChatError('disconnected', reason);
    for (const [ref, r] of this._requests) {
      clearTimeout(r.timer);
      r.reject(err);
      this._requests.delete(ref);
    }
    for (const w of this._convWaiters.splice(0)) w.reject(err);
    for (const w of this._presenceWaiters.splice(0)) w.reject(err);
  }

  _backoffDelay() {
    const b = this.opts.backoff;
    const cap = Math.min(b.max, b.initial * b.factor ** Math.min(this._attempt, 30));
    // Full jitter, with a floor of a tenth of the step so attempts never pile up at 0.
    return Math.round(cap * 0.1 + Math.random() * cap * 0.9);
  }

  _scheduleReconnect() {
    if (this._closed || this._timers.reconnect) return;
    const delay = this._backoffDelay();
    this._attempt++;
    this._setState('reconnecting', { delay, attempt: this._attempt });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delay);
  }

  _networkOnline() {
    if (this._closed || !this._connectStarted) return;
    if (!this._ws) {
      this._attempt = 0;
      this._clearTimer('reconnect');
      this._open();
    }
  }

  _networkOffline() {
    if (this._closed || !this._connectStarted) return;
    // The socket is as good as dead; do not wait for the ping to notice.
    if (this._ws) this._onSocketGone('the browser went offline');
  }

  _clearTimer(k) {
    if (this._timers[k]) {
      clearTimeout(this._timers[k]);
      clearInterval(this._timers[k]);
      this._timers[k] = null;
    }
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || !this._helloed || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this._log('send failed', err);
      return false;
    }
  }

  _startPing() {
    this._clearTimer('ping');
    const every = Math.max(1000, Math.min(this.opts.pingInterval, this.opts.pingTimeout) / 2);
    this._timers.ping = setInterval(() => {
      if (!this._ws || !this._helloed) return;
      const now = Date.now();
      const quiet = now - this._lastFrameAt;
      if (this._pingSentAt && now - this._pingSentAt > this.opts.pingTimeout && this._lastFrameAt < this._pingSentAt) {
        this._onSocketGone('no answer to ping');
        return;
      }
      if (quiet >= this.opts.pingInterval && (!this._pingSentAt || this._lastFrameAt >= this._pingSentAt)) {
        this._pingSentAt = now;
        this._sendFrame({ type: 'ping' });
      }
    }, every);
  }

  _startTick() {
    this._clearTimer('tick');
    this._timers.tick = setInterval(() => this._tick(), 1000);
  }

  /** Once a second: resend outbox items whose answer is overdue or whose retry time came. */
  _tick() {
    if (!this._helloed) return;
    const now = Date.now();
    for (const item of this._outbox.values()) {
      if (item.retryAt && now >= item.retryAt) {
        item.retryAt = 0;
        this._transmit(item);
      } else if (!item.retryAt && item.sentAt && now - item.sentAt > this.opts.ackTimeout) {
        this._transmit(item);
      } else if (!item.retryAt && !item.sentAt) {
        this._transmit(item);
      }
    }
  }

  // ------------------------------------------------------------------ frames in

  _onRaw(data) {
    this._lastFrameAt = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this._log('frame is not JSON', data);
      return;
    }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'hello': return this._onHello(f);
      case 'msg': return this._onEvent(f, this._syncing ? 'sync' : 'live');
      case 'ack': return this._onAck(f);
      case 'synced': return this._onSynced();
      case 'history': return this._onHistory(f);
      case 'receipt': return this._onReceipt(f);
      case 'typing': return this._emit('typing', { conv: f.conv, user: f.user });
      case 'presence': return this._onPresence(f);
      case 'members': return this._emit('members', { conv: f.conv, added: f.added || [], removed: f.removed || [], deleted: !!f.deleted });
      case 'conversations': return this._onConversations(f);
      case 'error': return this._onError(f);
      case 'pong': return undefined;
      case 'auth': return undefined; // the connection runs on the new token until its exp
      default:
        this._log('unknown frame', f.type);
        return undefined;
    }
  }

  _onHello(f) {
    this._helloed = true;
    this._failuresBeforeHello = 0;
    this._clearTimer('hello');
    this.session = f.session;
    if (f.user) this.user = f.user;
    if (typeof f.server_time === 'number') this.serverTimeOffset = f.server_time - Date.now();
    this._pingSentAt = 0;
    this._startPing();
    this._emit('connected', { user: this.user, session: this.session });
    this._sendSync();
    // The outbox goes again, oldest first, with the same cmids.
    for (const item of this._outbox.values()) {
      item.retryAt = 0;
      this._transmit(item);
    }
    for (const [conv, seq] of this._readWanted) this._sendRead(conv, seq);
    this._flushSeen();
    if (this._watched.size) this._askPresence([...this._watched]).catch(() => {});
  }

  _sendSync() {
    const cursors = {};
    for (const [conv, c] of this._convs) if (c.cursor !== undefined) cursors[conv] = c.cursor;
    this._syncing = true;
    this._setState('syncing');
    if (!this._sendFrame({ type: 'sync', cursors })) this._syncing = false;
  }

  _onSynced() {
    this._syncing = false;
    this._attempt = 0;
    this._syncFailures = 0;
    for (const [conv, c] of this._convs) this._drain(conv, c);
    this._setState('ready');
    this._emit('synced', {});
  }

  _onError(f) {
    const code = f.code || 'error';
    const msg = f.message || '';
    if (code === 'bad_token') {
      // a renewal the server refused: the connection closes at the old token's exp (4003) and the
      // next one asks getToken() again
      this._log('token renewal refused', msg);
      return undefined;
    }
    if (f.ref !== undefined && f.ref !== null) {
      const ref = String(f.ref);
      const item = this._outbox.get(ref);
      if (item) return this._onItemError(item, code, msg);
      const r = this._requests.get(ref);
      if (r) {
        this._requests.delete(ref);
        clearTimeout(r.timer);
        r.reject(new ChatError(code, msg, ref));
        return undefined;
      }
    } else if (/^sync\b/.test(msg) && this._syncing) {
      // "sync stopped; send it again with your cursors" (or it could not start)
      this._syncing = false;
      this._clearTimer('resync');
      const step = Math.min(30000, 500 * 2 ** Math.min(this._syncFailures++, 6));
      this._timers.resync = setTimeout(() => {
        this._timers.resync = null;
        if (this._helloed) this._sendSync();
      }, step * (0.5 + Math.random() * 0.5));
      return undefined;
    } else if (/^conversations\b/.test(msg) && this._convWaiters.length) {
      this._convWaiters.shift().reject(new ChatError(code, msg));
      return undefined;
    } else if (/^history\b/.test(msg) && this._requests.size) {
      // A history refusal that lost its ref: fail the oldest history request.
      const [ref, r] = this._requests.entries().next().value;
      this._requests.delete(ref);
      clearTimeout(r.timer);
      r.reject(new ChatError(code, msg, ref));
      return undefined;
    }
    this._emit('error', new ChatError(code, msg, f.ref));
    return undefined;
  }

  // ------------------------------------------------------------------ ordering

  _conv(conv) {
    let c = this._convs.get(conv);
    if (!c) {
      c = { cursor: undefined, buffer: new Map(), filling: false, fillTimer: null };
      this._convs.set(conv, c);
    }
    return c;
  }

  _rememberId(id) {
    this._seenIds.add(id);
    if (this._seenIds.size > 20000) {
      // Drop the oldest half (a Set iterates in insertion order).
      let n = 10000;
      for (const old of this._seenIds) {
        this._seenIds.delete(old);
        if (--n <= 0) break;
      }
    }
  }

  _onEvent(ev, source) {
    if (typeof ev.conv !== 'string' || !Number.isInteger(ev.seq) || ev.seq < 1) return;
    // An event of ours acks its outbox item even when the ack itself was lost.
    if (ev.from === this.user && ev.cmid) {
      const item = this._outbox.get(ev.cmid);
      if (item && item.conv === ev.conv) this._acked(item, { seq: ev.seq, id: ev.id });
    }
    if (ev.id && this._seenIds.has(ev.id)) return;
    const c = this._conv(ev.conv);
    if (c.cursor !== undefined && ev.seq <= c.cursor) return;
    if (c.buffer.has(ev.seq)) return;
    const copy = { ...ev };
    delete copy.type;
    copy.source = source;
    c.buffer.set(ev.seq, copy);
    this._drain(ev.conv, c);
  }

  /** Hands on what is contiguous after the cursor; asks history for a gap. */
  _drain(conv, c) {
    if (c.buffer.size === 0) return;
    if (c.cursor === undefined) {
      // No cursor yet: while a sync runs, wait for it (it starts at the server's delivery
      // cursor); after it, the first event held is where this conversation starts for us.
      if (this._syncing) return;
      c.cursor = Math.min(...c.buffer.keys()) - 1;
    }
    const before = c.cursor;
    while (c.buffer.has(c.cursor + 1)) {
      const ev = c.buffer.get(c.cursor + 1);
      c.buffer.delete(c.cursor + 1);
      c.cursor++;
      if (ev.id) {
        if (this._seenIds.has(ev.id)) continue;
        this._rememberId(ev.id);
      }
      this._emit('message', ev);
    }
    for (const seq of c.buffer.keys()) if (seq <= c.cursor) c.buffer.delete(seq);
    if (c.cursor !== before) {
      this._dirtyCursors.add(conv);
      this._scheduleCursorSave();
      if (this.opts.autoSeen) this.seen(conv, c.cursor);
    }
    if (c.buffer.size > 0 && !this._syncing) this._fillGap(conv, c);
  }

  async _fillGap(conv, c) {
    if (c.filling || !this._helloed || this._syncing || c.buffer.size === 0) return;
    const next = c.cursor + 1;
    const first = Math.min(...c.buffer.keys());
    if (first <= next) return;
    c.filling = true;
    const limit = Math.min(this.opts.historyPage, first - next);
    this._emit('gap', { conv, from: next, to: first - 1 });
    let res;
    try {
      res = await this._historyRequest(conv, first, limit);
    } catch (err) {
      c.filling = false;
      this._log('gap fill failed', conv, err);
      if (err && err.code === 'not_member') {
        // We left the conversation: hand on what we hold, there is nothing more to fetch.
        c.cursor = Math.min(...c.buffer.keys()) - 1;
        this._drain(conv, c);
        return;
      }
      clearTimeout(c.fillTimer);
      c.fillTimer = setTimeout(() => this._fillGap(conv, c), 1000 + Math.random() * 1000);
      return;
    }
    c.filling = false;
    let inRange = 0;
    for (const m of res.messages || []) {
      if (m.seq >= next && m.seq < first) inRange++;
      if (c.cursor === undefined || m.seq > c.cursor) {
        if (!c.buffer.has(m.seq) && !(m.id && this._seenIds.has(m.id))) {
          const copy = { ...m };
          delete copy.type;
          copy.source = 'history';
          c.buffer.set(m.seq, copy);
        }
      }
    }
    if (inRange === 0 && !c.buffer.has(c.cursor + 1)) {
      // The server has nothing in the gap (never expected: seq grows by exactly 1): step over
      // it rather than wait forever.
      this._emit('gap', { conv, from: next, to: first - 1, skipped: true });
      c.cursor = first - 1;
    }
    this._drain(conv, c);
  }

  // ------------------------------------------------------------------ cursors

  /** The highest seq handed on in `conv` with nothing missing below it (undefined: none yet). */
  cursor(conv) {
    const c = this._convs.get(conv);
    return c ? c.cursor : undefined;
  }

  /** Every cursor the client keeps: { conv: seq }. */
  cursors() {
    const out = {};
    for (const [conv, c] of this._convs) if (c.cursor !== undefined) out[conv] = c.cursor;
    return out;
  }

  _scheduleCursorSave() {
    if (this._timers.cursors) return;
    this._timers.cursors = setTimeout(() => {
      this._timers.cursors = null;
      this._flushCursors();
    }, 300);
  }

  _flushCursors() {
    if (!this._store || this._dirtyCursors.size === 0) return;
    const entries = [];
    for (const conv of this._dirtyCursors) {
      const c = this._convs.get(conv);
      if (c && c.cursor !== undefined) entries.push([conv, c.cursor]);
    }
    this._dirtyCursors.clear();
    this._store.putCursors(entries).catch((err) => this._log('saving cursors failed', err));
  }

  // ------------------------------------------------------------------ outbox

  _itemFromRecord(rec) {
    const d = deferred();
    d.promise.catch(() => {});
    return { ...rec, sentAt: 0, retryAt: 0, attempts: rec.attempts || 0, _d: d, _stored: Promise.resolve() };
  }

  _publicItem(item) {
    const { _d, _stored, sentAt, retryAt, ...pub } = item;
    pub.done = _d.promise;
    pub.stored = _stored;
    return pub;
  }

  _record(item) {
    const { _d, _stored, sentAt, retryAt, ...rec } = item;
    return rec;
  }

  _enqueue(fields) {
    if (this._closed) throw new Error('ChatClient: closed');
    if (typeof fields.conv !== 'string' || !ID_RE.test(fields.conv)) {
      throw new TypeError('conv must be 1-64 characters of [A-Za-z0-9_-]');
    }
    if (fields.body !== undefined) {
      if (typeof fields.body !== 'string') throw new TypeError('body must be a string');
      if (utf8Length(fields.body) > MAX_BODY_BYTES) throw new RangeError('body is over 16 KiB');
    }
    if (fields.meta !== undefined && fields.meta !== null) {
      if (typeof fields.meta !== 'object' || Array.isArray(fields.meta)) throw new TypeError('meta must be an object');
      if (utf8Length(JSON.stringify(fields.meta)) > MAX_BODY_BYTES) throw new RangeError('meta is over 16 KiB');
    }
    if (fields.target !== undefined && !(Number.isInteger(fields.target) && fields.target >= 1)) {
      throw new TypeError('target must be the seq of a message');
    }
    const d = deferred();
    d.promise.catch(() => {}); // the app may not wait on it
    const item = {
      ...fields,
      cmid: newCmid(),
      user: this.user,
      createdAt: Date.now(),
      order: ++this._order,
      attempts: 0,
      sentAt: 0,
      retryAt: 0,
      _d: d,
    };
    this._outbox.set(item.cmid, item);
    const whenLoaded = this._loaded || Promise.resolve();
    item._stored = whenLoaded
      .then(() => {
        if (!item.user) item.user = this.user;
        return this._outbox.has(item.cmid) ? this._store.putItem(this._record(item)) : undefined;
      })
      .catch((err) => this._log('storing outbox item failed', err));
    this._emit('outbox', { item: this._publicItem(item), status: 'queued' });
    this._transmit(item);
    return this._publicItem(item);
  }

  _frameOf(item) {
    switch (item.kind) {
      case 'edit':
        return { type: 'edit', conv: item.conv, cmid: item.cmid, target: item.target, body: item.body };
      case 'delete':
        return { type: 'delete', conv: item.conv, cmid: item.cmid, target: item.target };
      case 'reaction':
        return { type: 'react', conv: item.conv, cmid: item.cmid, target: item.target, emoji: item.emoji, on: item.on };
      default: {
        const f = { type: 'send', conv: item.conv, cmid: item.cmid, body: item.body };
        if (item.meta) f.meta = item.meta;
        return f;
      }
    }
  }

  _transmit(item) {
    if (!this._helloed) return false;
    if (!this._sendFrame(this._frameOf(item))) return false;
    item.sentAt = Date.now();
    item.attempts++;
    return true;
  }

  _onAck(f) {
    const item = this._outbox.get(f.cmid);
    if (item && item.conv === f.conv) this._acked(item, { seq: f.seq, id: f.id });
  }

  _acked(item, { seq, id }) {
    if (!this._outbox.has(item.cmid)) return;
    this._outbox.delete(item.cmid);
    const ack = { conv: item.conv, cmid: item.cmid, seq, id, kind: item.kind };
    const stored = item._stored || Promise.resolve();
    stored.then(() => this._store.deleteItem(item.cmid)).catch((err) => this._log('outbox delete failed', err));
    item._d.resolve(ack);
    this._emit('ack', ack);
  }

  _onItemError(item, code, message) {
    if (RETRY_ERRORS.has(code) || !PERMANENT_ERRORS.has(code)) {
      // The server said: send it again with the same cmid (soon, growing with the attempts).
      const wait = Math.min(15000, 500 * 2 ** Math.min(item.attempts, 5));
      item.retryAt = Date.now() + Math.round(wait * (0.5 + Math.random() * 0.5));
      this._emit('retry', { cmid: item.cmid, conv: item.conv, code, attempts: item.attempts });
      return;
    }
    this._outbox.delete(item.cmid);
    const stored = item._stored || Promise.resolve();
    stored.then(() => this._store.deleteItem(item.cmid)).catch(() => {});
    const err = new ChatError(code, message, item.cmid);
    item._d.reject(err);
    this._emit('failed', { item: this._publicItem(item), code, message });
  }

  /** Posts a text message; returns the outbox item at once (its `done` resolves with the ack). */
  send(conv, body, meta) {
    return this._enqueue({ kind: 'text', conv, body, ...(meta ? { meta } : {}) });
  }

  /** Changes the body of message `target` (the sender's own). */
  edit(conv, target, body) {
    return this._enqueue({ kind: 'edit', conv, target, body });
  }

  /** Deletes message `target` (the sender's own). */
  delete(conv, target) {
    return this._enqueue({ kind: 'delete', conv, target });
  }

  /** Adds (on = true) or takes back (on = false) a reaction to message `target`. */
  react(conv, target, emoji, on = true) {
    if (typeof emoji !== 'string' || emoji.length === 0 || utf8Length(emoji) > 64) {
      throw new TypeError('emoji must be 1-64 bytes');
    }
    return this._enqueue({ kind: 'reaction', conv, target, emoji, on: !!on });
  }

  /** What waits in the outbox (of one conversation, or all), oldest first. */
  pending(conv) {
    const out = [];
    for (const item of this._outbox.values()) if (conv === undefined || item.conv === conv) out.push(this._publicItem(item));
    return out;
  }

  // ------------------------------------------------------------------ cursors to the server

  /** Tells the server the device has everything up to `seq` (sent by itself when autoSeen). */
  seen(conv, seq) {
    if (!Number.isInteger(seq) || seq < 0) return;
    if ((this._lastSeenSent.get(conv) || 0) >= seq && !this._pendingSeen.has(conv)) return;
    if ((this._pendingSeen.get(conv) || 0) >= seq) return;
    this._pendingSeen.set(conv, seq);
    if (!this._timers.seen) {
      this._timers.seen = setTimeout(() => {
        this._timers.seen = null;
        this._flushSeen();
      }, this.opts.seenDelay);
    }
  }

  _flushSeen() {
    if (!this._helloed) return;
    for (const [conv, seq] of this._pendingSeen) {
      if ((this._lastSeenSent.get(conv) || 0) < seq && this._sendFrame({ type: 'seen', conv, seq })) {
        this._lastSeenSent.set(conv, seq);
      }
    }
    this._pendingSeen.clear();
  }

  /** The user has read `conv` up to `seq` (default: everything handed on). */
  read(conv, seq) {
    if (seq === undefined) seq = this.cursor(conv);
    if (!Number.isInteger(seq) || seq < 1) return;
    const had = Math.max(this._readSent.get(conv) || 0, this._readWanted.get(conv) || 0, this.readCursor(conv, this.user) || 0);
    if (seq <= had) return;
    this._readWanted.set(conv, seq);
    this._sendRead(conv, seq);
  }

  _sendRead(conv, seq) {
    if (this._sendFrame({ type: 'read', conv, seq })) {
      this._readSent.set(conv, seq);
      this._readWanted.delete(conv);
    }
  }

  _onReceipt(f) {
    if (!this._receipts.has(f.conv)) this._receipts.set(f.conv, new Map());
    const m = this._receipts.get(f.conv);
    const old = m.get(f.user) || { read: 0, seen: 0 };
    const r = { read: Math.max(old.read, f.read || 0), seen: Math.max(old.seen, f.seen || 0) };
    m.set(f.user, r);
    this._emit('receipt', { conv: f.conv, user: f.user, read: f.read || 0, seen: f.seen || 0 });
  }

  /** The highest read cursor of `user` in `conv` that this client has seen in receipts. */
  readCursor(conv, user) {
    const m = this._receipts.get(conv);
    const r = m && m.get(user);
    return r ? r.read : undefined;
  }

  /** Read cursors of the members of `conv` from the receipts seen so far: { user: read }. */
  receipts(conv) {
    const out = {};
    const m = this._receipts.get(conv);
    if (m) for (const [user, r] of m) out[user] = r.read;
    return out;
  }

  // ------------------------------------------------------------------ typing, presence

  /** Tells the other members the user is typing (at most once per typingInterval). */
  typing(conv) {
    const now = Date.now();
    if (now - (this._typingAt.get(conv) || 0) < this.opts.typingInterval) return false;
    if (!this._sendFrame({ type: 'typing', conv })) return false;
    this._typingAt.set(conv, now);
    return true;
  }

  /**
   * Asks for the presence of users and watches them: later changes come as `presence` events
   * (also after reconnects). Resolves with { user: {online, last_seen} }.
   */
  presence(users) {
    const list = [...new Set(users)].filter((u) => ID_RE.test(u));
    for (const u of list) this._watched.add(u);
    return this._askPresence(list);
  }

  _askPresence(list) {
    const chunks = [];
    for (let i = 0; i < list.length; i += 100) chunks.push(list.slice(i, i + 100));
    return Promise.all(
      chunks.map((chunk) => {
        const d = deferred();
        const w = { keys: new Set(chunk), resolve: d.resolve, reject: d.reject };
        this._presenceWaiters.push(w); // before sending: an answer may come at once
        if (!this._sendFrame({ type: 'presence', users: chunk })) {
          this._presenceWaiters.splice(this._presenceWaiters.indexOf(w), 1);
          return Promise.reject(new ChatError('disconnected', 'not connected'));
        }
        return d.promise;
      }),
    ).then((parts) => Object.assign({}, ...parts));
  }

  _onPresence(f) {
    const users = f.users || {};
    for (const [u, p] of Object.entries(users)) this._presence.set(u, p);
    const keys = Object.keys(users);
    const i = this._presenceWaiters.findIndex((w) => w.keys.size === keys.length && keys.every((k) => w.keys.has(k)));
    if (i >= 0) this._presenceWaiters.splice(i, 1)[0].resolve(users);
    this._emit('presence', { users });
  }

  /** The last known presence of a user (undefined if never asked). */
  presenceOf(user) {
    return this._presence.get(user);
  }

  // ------------------------------------------------------------------ requests

  _historyRequest(conv, before, limit) {
    const ref = `h${++this._ref}`;
    const d = deferred();
    const frame = { type: 'history', conv, ref, limit: Math.max(1, Math.min(100, limit || 50)) };
    if (before !== undefined && before !== null) frame.before = before;
    const timer = setTimeout(() => {
      if (this._requests.delete(ref)) d.reject(new ChatError('timeout', 'no answer to history', ref));
    }, this.opts.requestTimeout);
    this._requests.set(ref, { resolve: d.resolve, reject: d.reject, timer }); // before sending
    if (!this._sendFrame(frame)) {
      clearTimeout(timer);
      this._requests.delete(ref);
      return Promise.reject(new ChatError('disconnected', 'not connected'));
    }
    return d.promise;
  }

  _onHistory(f) {
    const ref = f.ref !== undefined ? String(f.ref) : '';
    const r = this._requests.get(ref);
    if (!r) return;
    this._requests.delete(ref);
    clearTimeout(r.timer);
    const messages = (f.messages || []).map((m) => {
      const copy = { ...m };
      delete copy.type;
      return copy;
    });
    r.resolve({ conv: f.conv, messages, more: !!f.more });
  }

  /**
   * Older events of a conversation: seq < before (default: from the newest), at most `limit`
   * (1-100, default 50), newest first, as the server sends them. Not handed on as `message`.
   */
  history(conv, { before, limit } = {}) {
    return this._historyRequest(conv, before, limit || 50);
  }

  /** The user's conversations with unread counts: [{conv, kind, last_seq, seen, read, unread}]. */
  conversations() {
    const d = deferred();
    const w = { resolve: d.resolve, reject: d.reject };
    w.timer = setTimeout(() => {
      const i = this._convWaiters.indexOf(w);
      if (i >= 0) {
        this._convWaiters.splice(i, 1);
        d.reject(new ChatError('timeout', 'no answer to conversations'));
      }
    }, this.opts.requestTimeout);
    this._convWaiters.push(w); // before sending
    if (!this._sendFrame({ type: 'conversations' })) {
      clearTimeout(w.timer);
      this._convWaiters.splice(this._convWaiters.indexOf(w), 1);
      return Promise.reject(new ChatError('disconnected', 'not connected'));
    }
    return d.promise;
  }

  _onConversations(f) {
    const list = Array.isArray(f.conversations) ? f.conversations : [];
    for (const c of list) {
      // Our own read cursor, as the server has it.
      if (this.user && Number.isInteger(c.read)) {
        if (!this._receipts.has(c.conv)) this._receipts.set(c.conv, new Map());
        const m = this._receipts.get(c.conv);
        const old = m.get(this.user) || { read: 0, seen: 0 };
        m.set(this.user, { read: Math.max(old.read, c.read), seen: Math.max(old.seen, c.seen || 0) });
      }
    }
    const w = this._convWaiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(list);
    }
    this._emit('conversations', list);
  }

  /** Sends a ping now (the client also pings by itself when the line is quiet). */
  ping() {
    return this._sendFrame({ type: 'ping' });
  }
}

export default ChatClient;
