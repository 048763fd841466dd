// The demo app of the chat platform: plain JS on the SDK (sdk/chat.js). Development mode only:
// it signs in with a token from /dev/token and creates conversations through /dev/conv.
import { ChatClient } from './sdk/chat.js';

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const REACTIONS = ['👍', '❤️', '😂', '🎉'];
const HISTORY_PAGE = 50;
const TYPING_SHOW_MS = 4500;

const $ = (id) => document.getElementById(id);

/** A small element builder: h('div', {class: 'x', dataset: {...}}, child, 'text'). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(path, viewBox = '0 0 24 24') {
  const el = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  el.setAttribute('viewBox', viewBox);
  el.setAttribute('aria-hidden', 'true');
  el.innerHTML = path;
  return el;
}

const ICON_CHECK = '<path d="M3 6.5l3 3 6-6.5"/>';
const ICON_CHECK2 = '<path d="M1 6.5l3 3 6-6.5M7.5 8.5l1 1 6-6.5"/>';
const ICON_CLOCK = '<circle cx="9" cy="6" r="4.5"/><path d="M9 3.8V6l1.5 1"/>';
const ICON_EDIT = '<path d="M4 20h4L19 9l-4-4L4 16z"/>';
const ICON_TRASH = '<path d="M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13"/>';

function hue(s) {
  let x = 0;
  for (const ch of s) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function avatar(name, cls = '') {
  const el = h('span', { class: `avatar ${cls}`.trim(), style: `--h:${hue(name)}` }, initials(name));
  return el;
}

function initials(name) {
  const parts = name.replace(/[_-]+/g, ' ').trim().split(/\s+/).filter(Boolean);
  if (parts.length >= 2) return (parts[0][0] + parts[1][0]).toUpperCase();
  return (parts[0] || '?').slice(0, 2);
}

function clock(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
}

function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const y = new Date();
  y.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === y.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'short', month: 'short', day: 'numeric' });
}

function ago(ms) {
  if (!ms) return 'offline';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return 'last seen just now';
  if (s < 3600) return `last seen ${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `last seen ${Math.floor(s / 3600)} h ago`;
  return `last seen ${new Date(ms).toLocaleDateString([], { month: 'short', day: 'numeric' })}`;
}

function listTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (d.toDateString() === new Date().toDateString()) return clock(ts);
  return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

// ------------------------------------------------------------------------------- state

const S = {
  me: null,
  client: null,
  convs: new Map(), // id -> conversation model
  open: null, // id of the open conversation
  presence: new Map(),
  typing: new Map(), // conv -> Map(user -> until ms)
  editing: null, // { conv, seq }
  asked: new Set(), // users whose presence we asked for
  failed: [], // sends the server refused for good: { conv, cmid, body, createdAt, code }
  renderTimer: null,
  stickBottom: true,
};

function store(key) {
  return `chat-demo:${S.me}:${key}`;
}

function loadJSON(key, def) {
  try {
    const v = JSON.parse(localStorage.getItem(store(key)));
    return v && typeof v === 'object' ? v : def;
  } catch {
    return def;
  }
}

function saveJSON(key, v) {
  try {
    localStorage.setItem(store(key), JSON.stringify(v));
  } catch {
    /* full or disabled */
  }
}

/** The model of one conversation. */
function conv(id) {
  let c = S.convs.get(id);
  if (!c) {
    c = {
      id,
      kind: '',
      lastSeq: 0,
      read: 0, // the user's own read cursor
      members: new Set(),
      readers: new Map(), // other user -> read cursor
      events: new Map(), // seq -> event
      loaded: false, // history fetched once
      loading: null,
      oldest: Infinity,
      more: false,
      lastTs: 0,
      serverUnread: 0,
    };
    const m = loadJSON('members', {})[id];
    if (Array.isArray(m)) for (const u of m) c.members.add(u);
    const r = loadJSON('receipts', {})[id];
    if (r) for (const [u, seq] of Object.entries(r)) c.readers.set(u, seq);
    S.convs.set(id, c);
  }
  return c;
}

function rememberMembers(c, users) {
  let changed = false;
  for (const u of users) {
    if (!ID_RE.test(u) || c.members.has(u)) continue;
    c.members.add(u);
    changed = true;
  }
  if (changed) {
    const all = loadJSON('members', {});
    all[c.id] = [...c.members];
    saveJSON('members', all);
    askPresence();
  }
}

function saveReceipts(c) {
  const all = loadJSON('receipts', {});
  all[c.id] = Object.fromEntries(c.readers);
  saveJSON('receipts', all);
}

function others(c) {
  return [...c.members].filter((u) => u !== S.me).sort();
}

/** The title of a conversation: the other person of a dm-..., else its id. */
function title(c) {
  const pre = `dm-${S.me}-`;
  const post = `-${S.me}`;
  if (c.id.startsWith(pre)) return c.id.slice(pre.length);
  if (c.id.startsWith('dm-') && c.id.endsWith(post)) return c.id.slice(3, -post.length);
  return c.id;
}

function isDirect(c) {
  return c.id.startsWith('dm-') && title(c) !== c.id;
}

function addEvent(c, ev) {
  if (c.events.has(ev.seq)) {
    // history may carry "deleted" for a message we hold already
    if (ev.deleted) c.events.get(ev.seq).deleted = true;
    return;
  }
  c.events.set(ev.seq, ev);
  if (ev.seq > c.lastSeq) c.lastSeq = ev.seq;
  if (ev.ts > c.lastTs) c.lastTs = ev.ts;
  if (ev.seq < c.oldest) c.oldest = ev.seq;
  if (ev.from) rememberMembers(c, [ev.from]);
}

function maxLoaded(c) {
  let m = 0;
  for (const s of c.events.keys()) if (s > m) m = s;
  return m;
}

function unread(c) {
  // Precise where the loaded events cover everything after the read cursor, else the server's.
  const top = maxLoaded(c);
  let n = 0;
  for (const ev of c.events.values()) {
    if (ev.seq > c.read && ev.from !== S.me && (ev.kind === 'text' || ev.kind === 'system')) n++;
  }
  const covered = c.oldest <= c.read + 1 || (c.loaded && !c.more);
  if (!covered) return Math.max(n, c.serverUnread);
  return n + Math.max(0, c.lastSeq - top);
}

/** Messages of a conversation with edits, deletes and reactions applied. */
function view(c) {
  const seqs = [...c.events.keys()].sort((a, b) => a - b);
  const msgs = new Map();
  for (const seq of seqs) {
    const ev = c.events.get(seq);
    if (ev.kind === 'text' || ev.kind === 'system') {
      msgs.set(seq, { ev, body: ev.body, edited: false, deleted: !!ev.deleted, reactions: new Map() });
      continue;
    }
    const m = msgs.get(ev.target);
    if (!m) continue;
    if (ev.kind === 'edit' && ev.from === m.ev.from) {
      m.body = ev.body;
      m.edited = true;
    } else if (ev.kind === 'delete' && ev.from === m.ev.from) {
      m.deleted = true;
    } else if (ev.kind === 'reaction') {
      if (!m.reactions.has(ev.emoji)) m.reactions.set(ev.emoji, new Set());
      if (ev.on === false) m.reactions.get(ev.emoji).delete(ev.from);
      else m.reactions.get(ev.emoji).add(ev.from);
    }
  }
  return [...msgs.values()];
}

function preview(c) {
  const v = view(c);
  const last = v[v.length - 1];
  const pending = S.client ? S.client.pending(c.id).filter((p) => p.kind === 'text') : [];
  if (pending.length) return `You: ${pending[pending.length - 1].body}`;
  if (!last) return '';
  const who = last.ev.from === S.me ? 'You: ' : isDirect(c) ? '' : `${last.ev.from}: `;
  return who + (last.deleted ? 'Message deleted' : last.body);
}

// ------------------------------------------------------------------------------- sign in

async function fetchToken(user) {
  const res = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: 'no-store' });
  if (res.status === 404) throw new Error('This server does not run in development mode (CHAT_DEV_MODE=1).');
  if (!res.ok) throw new Error(`Sign in failed (HTTP ${res.status}).`);
  const j = await res.json();
  return j.token;
}

function showLogin(error) {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !error;
  $('login-error').textContent = error || '';
  $('login-user').focus();
}

async function signIn(user) {
  let token;
  try {
    token = await fetchToken(user);
  } catch (err) {
    showLogin(err.message);
    return;
  }
  localStorage.setItem('chat-demo:user', user);
  S.me = user;
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = user;
  $('me-avatar').replaceWith(Object.assign(avatar(user), { id: 'me-avatar' }));
  document.title = `chat: ${user}`;

  const client = new ChatClient({ token, getToken: () => fetchToken(user), backoff: { initial: 300, max: 8000 } });
  S.client = client;
  window.chatDemo = { client, state: S, open: openConv };
  wire(client);
  renderList();
  client.connect().catch(() => {});
  const want = decodeURIComponent(location.hash.replace(/^#/, ''));
  if (ID_RE.test(want)) openConv(want);
}

// ------------------------------------------------------------------------------- SDK events

function wire(client) {
  client.on('state', ({ state }) => {
    const labels = { idle: 'Starting', connecting: 'Connecting…', syncing: 'Syncing…', ready: 'Online', reconnecting: 'Offline, retrying…', closed: 'Signed out' };
    $('conn').dataset.state = state;
    $('conn-text').textContent = labels[state] || state;
    if (state === 'ready') {
      refreshConversations();
      askPresence(true);
    }
  });

  client.on('message', (ev) => {
    const c = conv(ev.conv);
    const fresh = !c.events.has(ev.seq);
    addEvent(c, ev);
    if (fresh && ev.from !== S.me) stopTyping(c.id, ev.from);
    if (ev.from === S.me && c.read >= ev.seq - 1) c.read = Math.max(c.read, ev.seq);
    if (!c.loaded && !c.loading) loadHistory(c);
    markReadIfOpen(c);
    scheduleRender();
  });

  client.on('receipt', (r) => {
    const c = conv(r.conv);
    if (r.user === S.me) {
      c.read = Math.max(c.read, r.read);
    } else {
      if ((c.readers.get(r.user) || 0) < r.read) {
        c.readers.set(r.user, r.read);
        saveReceipts(c);
      }
      rememberMembers(c, [r.user]);
    }
    scheduleRender();
  });

  client.on('typing', ({ conv: id, user }) => {
    if (user === S.me) return;
    if (!S.typing.has(id)) S.typing.set(id, new Map());
    S.typing.get(id).set(user, Date.now() + TYPING_SHOW_MS);
    rememberMembers(conv(id), [user]);
    scheduleRender();
    setTimeout(scheduleRender, TYPING_SHOW_MS + 50);
  });

  client.on('presence', ({ users }) => {
    for (const [u, p] of Object.entries(users)) S.presence.set(u, p);
    scheduleRender();
  });

  client.on('members', (m) => {
    const c = conv(m.conv);
    if (m.deleted || m.removed.includes(S.me)) {
      S.convs.delete(m.conv);
      if (S.open === m.conv) closeConv();
    } else {
      rememberMembers(c, m.added);
      for (const u of m.removed) c.members.delete(u);
      if (!c.loaded && !c.loading) loadHistory(c);
    }
    refreshConversations();
    scheduleRender();
  });

  client.on('failed', ({ item, code }) => {
    if (item.kind === 'text') S.failed.push({ conv: item.conv, cmid: item.cmid, body: item.body, createdAt: item.createdAt, code });
    scheduleRender();
  });
  for (const name of ['outbox', 'ack', 'retry']) client.on(name, scheduleRender);
}

function stopTyping(id, user) {
  const t = S.typing.get(id);
  if (t) t.delete(user);
}

async function refreshConversations() {
  let list;
  try {
    list = await S.client.conversations();
  } catch {
    return; // not connected, or the server cannot list now: the next ready state asks again
  }
  const seen = new Set();
  for (const s of list) {
    const c = conv(s.conv);
    seen.add(s.conv);
    c.kind = s.kind;
    c.lastSeq = Math.max(c.lastSeq, s.last_seq);
    c.read = Math.max(c.read, s.read);
    c.serverUnread = s.unread;
    if (!c.loaded && !c.loading) loadHistory(c);
  }
  for (const id of [...S.convs.keys()]) {
    const c = S.convs.get(id);
    if (!seen.has(id) && c.events.size === 0 && id !== S.open) S.convs.delete(id);
  }
  scheduleRender();
}

/** Loads a page of history (the newest, or before the oldest loaded). */
function loadHistory(c, earlier = false) {
  if (c.loading) return c.loading;
  const opts = { limit: HISTORY_PAGE };
  if (earlier && Number.isFinite(c.oldest)) opts.before = c.oldest;
  c.loading = S.client
    .history(c.id, opts)
    .then((page) => {
      for (const ev of page.messages) addEvent(c, ev);
      if (!earlier || !c.loaded) c.more = page.more;
      if (earlier) c.more = page.more;
      c.loaded = true;
      markReadIfOpen(c);
      scheduleRender();
    })
    .catch(() => {
      /* retried on the next ready state */
    })
    .finally(() => {
      c.loading = null;
    });
  return c.loading;
}

function askPresence(all = false) {
  if (!S.client || S.client.state !== 'ready') return;
  const want = new Set();
  for (const c of S.convs.values()) for (const u of c.members) if (u !== S.me) want.add(u);
  const fresh = [...want].filter((u) => all || !S.asked.has(u));
  if (!fresh.length) return;
  for (const u of fresh) S.asked.add(u);
  S.client.presence(fresh).then((users) => {
    for (const [u, p] of Object.entries(users)) S.presence.set(u, p);
    scheduleRender();
  }, () => {
    for (const u of fresh) S.asked.delete(u);
  });
}

function markReadIfOpen(c) {
  if (S.open !== c.id || document.visibilityState === 'hidden' || !S.client) return;
  const top = maxLoaded(c);
  if (top > c.read) {
    c.read = top;
    S.client.read(c.id, top);
  }
}

// ------------------------------------------------------------------------------- rendering

function scheduleRender() {
  if (S.renderTimer) return;
  S.renderTimer = setTimeout(() => {
    S.renderTimer = null;
    renderList();
    renderChat();
  }, 16);
}

function sortedConvs() {
  return [...S.convs.values()].sort((a, b) => b.lastTs - a.lastTs || a.id.localeCompare(b.id));
}

function typingUsers(id) {
  const t = S.typing.get(id);
  if (!t) return [];
  const now = Date.now();
  const out = [];
  for (const [u, until] of t) {
    if (until > now) out.push(u);
    else t.delete(u);
  }
  return out;
}

function renderList() {
  const ul = $('conv-list');
  const convs = sortedConvs();
  $('conv-empty').hidden = convs.length > 0;
  ul.replaceChildren(
    ...convs.map((c) => {
      const n = unread(c);
      const typing = typingUsers(c.id);
      const direct = isDirect(c);
      const av = avatar(title(c), direct ? '' : 'group');
      if (direct && S.presence.get(title(c))?.online) av.append(h('i', { class: 'dot' }));
      return h(
        'li',
        {
          class: `conv${c.id === S.open ? ' active' : ''}${n ? ' unread' : ''}`,
          dataset: { conv: c.id, unread: String(n) },
          onclick: () => openConv(c.id),
          tabindex: '0',
          onkeydown: (e) => {
            if (e.key === 'Enter') openConv(c.id);
          },
        },
        av,
        h(
          'div',
          { class: 'conv-main' },
          h('div', { class: 'conv-top' }, h('span', { class: 'conv-name' }, title(c)), h('span', { class: 'conv-time' }, listTime(c.lastTs))),
          h(
            'div',
            { class: 'conv-bottom' },
            typing.length
              ? h('span', { class: 'conv-preview typing-now' }, `${typing.join(', ')} typing…`)
              : h('span', { class: 'conv-preview' }, preview(c)),
            n ? h('span', { class: 'badge', 'aria-label': `${n} unread` }, n > 99 ? '99+' : String(n)) : null,
          ),
        ),
      );
    }),
  );
}

function headerSubtitle(c) {
  const sub = $('chat-sub');
  const typing = typingUsers(c.id);
  if (typing.length) {
    sub.replaceChildren(h('span', { class: 'typing-now' }, `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`));
    return;
  }
  const list = others(c);
  if (!list.length) {
    sub.textContent = 'Just you so far';
    return;
  }
  const parts = [];
  if (isDirect(c)) {
    const p = S.presence.get(list[0]);
    parts.push(p && p.online ? h('span', { class: 'on' }, 'online') : p ? ago(p.last_seen) : '');
  } else if (list.length <= 3) {
    for (const u of list) {
      const p = S.presence.get(u);
      if (parts.length) parts.push(' · ');
      parts.push(u, ' ');
      parts.push(p && p.online ? h('span', { class: 'on' }, 'online') : p ? ago(p.last_seen).replace('last ', '') : '');
    }
  } else {
    const online = list.filter((u) => S.presence.get(u)?.online).length;
    parts.push(`${list.length + 1} members`);
    if (online) parts.push(' · ', h('span', { class: 'on' }, `${online} online`));
  }
  sub.replaceChildren(...parts);
}

function markIcon(state) {
  const span = h('span', { class: 'mark', title: state === 'read' ? 'Read' : state === 'sent' ? 'Sent' : 'Sending' });
  span.append(svg(state === 'read' ? ICON_CHECK2 : state === 'sent' ? ICON_CHECK : ICON_CLOCK, state === 'pending' ? '0 0 18 12' : '0 0 16 12'));
  return span;
}

function readersOf(c, seq) {
  const out = [];
  for (const [u, r] of c.readers) if (u !== S.me && r >= seq) out.push(u);
  return out;
}

function renderChat() {
  const id = S.open;
  if (!id) return;
  const c = conv(id);
  $('chat-name').textContent = title(c);
  const av = avatar(title(c), isDirect(c) ? '' : 'group');
  av.id = 'chat-avatar';
  if (isDirect(c) && S.presence.get(title(c))?.online) av.append(h('i', { class: 'dot' }));
  $('chat-avatar').replaceWith(av);
  headerSubtitle(c);

  const box = $('messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const prevHeight = box.scrollHeight;
  const prevTop = box.scrollTop;

  const list = $('message-list');
  const items = [];
  const msgs = view(c);
  const pending = S.client.pending(id).filter((p) => p.kind === 'text' && !msgs.some((m) => m.ev.cmid === p.cmid));
  const failed = S.failed.filter((f) => f.conv === id);
  const rows = [
    ...msgs.map((m) => ({ m, from: m.ev.from, ts: m.ev.ts })),
    ...[...pending, ...failed].sort((a, b) => a.createdAt - b.createdAt).map((p) => ({ p, from: S.me, ts: p.createdAt })),
  ];
  let lastDay = '';
  const group = !isDirect(c);
  rows.forEach((row, i) => {
    const day = dayLabel(row.ts);
    if (day !== lastDay) {
      items.push(h('div', { class: 'day' }, day));
      lastDay = day;
    }
    const prev = rows[i - 1];
    const next = rows[i + 1];
    const first = !prev || prev.from !== row.from || row.ts - prev.ts > 5 * 60000 || dayLabel(prev.ts) !== day;
    const last = !next || next.from !== row.from || next.ts - row.ts > 5 * 60000 || dayLabel(next.ts) !== day;
    items.push(row.m ? messageEl(c, row.m, first, last, group) : pendingEl(row.p, first, last));
  });
  list.replaceChildren(...items);
  $('load-earlier').hidden = !(c.loaded && c.more);

  const typing = typingUsers(id);
  $('typing').hidden = typing.length === 0;
  $('typing-text').textContent = typing.length ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing` : '';

  if (S.stickBottom || nearBottom) {
    box.scrollTop = box.scrollHeight;
    S.stickBottom = false;
  } else if (S.keepOffset) {
    box.scrollTop = prevTop + (box.scrollHeight - prevHeight);
    S.keepOffset = false;
  }
}

function messageEl(c, m, first, last, group) {
  const ev = m.ev;
  const mine = ev.from === S.me;
  let state = '';
  let readBy = [];
  if (mine) {
    readBy = readersOf(c, ev.seq);
    state = readBy.length ? 'read' : 'sent';
  }
  const reactions = [...m.reactions].filter(([, users]) => users.size > 0);
  const bubble = h(
    'div',
    { class: 'bubble' },
    group && !mine && first ? h('div', { class: 'author', style: `color:hsl(${hue(ev.from)} 60% 42%)` }, ev.from) : null,
    h('div', { class: 'body' }, m.deleted ? 'This message was deleted' : m.body),
    reactions.length && !m.deleted
      ? h(
          'div',
          { class: 'reactions' },
          reactions.map(([emoji, users]) =>
            h(
              'button',
              {
                class: `reaction${users.has(S.me) ? ' mine-r' : ''}`,
                title: [...users].join(', '),
                onclick: (e) => {
                  e.stopPropagation();
                  S.client.react(c.id, ev.seq, emoji, !users.has(S.me));
                },
              },
              `${emoji} ${users.size}`,
            ),
          ),
        )
      : null,
    h(
      'div',
      { class: 'foot' },
      m.edited && !m.deleted ? h('span', { class: 'edited' }, 'edited') : null,
      h('time', { datetime: new Date(ev.ts).toISOString() }, clock(ev.ts)),
      mine && !m.deleted ? markIcon(state) : null,
    ),
  );
  if (mine && readBy.length) bubble.title = `Read by ${readBy.join(', ')}`;
  const actions = m.deleted
    ? null
    : h(
        'div',
        { class: 'actions' },
        REACTIONS.map((emoji) =>
          h('button', {
            title: `React ${emoji}`,
            onclick: (e) => {
              e.stopPropagation();
              const mineNow = m.reactions.get(emoji)?.has(S.me);
              S.client.react(c.id, ev.seq, emoji, !mineNow);
            },
          }, emoji),
        ),
        mine ? h('button', { title: 'Edit', class: 'act-edit', onclick: (e) => { e.stopPropagation(); startEdit(c, m); } }, svg(ICON_EDIT)) : null,
        mine ? h('button', { title: 'Delete', class: 'act-delete', onclick: (e) => { e.stopPropagation(); S.client.delete(c.id, ev.seq); } }, svg(ICON_TRASH)) : null,
      );
  return h(
    'div',
    {
      class: `msg${mine ? ' mine' : ''}${first ? ' first' : ''}${last ? ' last' : ''}${m.deleted ? ' deleted' : ''}`,
      dataset: { seq: String(ev.seq), cmid: ev.cmid, from: ev.from, state: mine ? state : 'theirs', deleted: m.deleted ? 'true' : 'false', edited: m.edited ? 'true' : 'false' },
      onclick: (e) => e.currentTarget.classList.toggle('show-actions'),
    },
    mine ? null : avatar(ev.from, 'small'),
    bubble,
    actions,
  );
}

function pendingEl(p, first, last) {
  if (p.code) {
    // refused for good (e.g. not a member any more): shown until dismissed
    return h(
      'div',
      {
        class: `msg mine${first ? ' first' : ''}${last ? ' last' : ''}`,
        dataset: { cmid: p.cmid, from: S.me, state: 'failed' },
        title: 'Click to dismiss',
        onclick: () => {
          S.failed = S.failed.filter((f) => f !== p);
          scheduleRender();
        },
      },
      h('div', { class: 'bubble' }, h('div', { class: 'body' }, p.body), h('div', { class: 'foot' }, `Not sent (${p.code.replace(/_/g, ' ')})`)),
    );
  }
  return h(
    'div',
    { class: `msg mine${first ? ' first' : ''}${last ? ' last' : ''}`, dataset: { cmid: p.cmid, from: S.me, state: 'pending' } },
    h('div', { class: 'bubble', title: 'Waiting to be sent' }, h('div', { class: 'body' }, p.body), h('div', { class: 'foot' }, h('time', {}, clock(p.createdAt)), markIcon('pending'))),
  );
}

// ------------------------------------------------------------------------------- actions

function openConv(id) {
  if (!ID_RE.test(id)) return;
  const c = conv(id);
  S.open = id;
  S.stickBottom = true;
  cancelEdit();
  if (location.hash !== `#${id}`) history.replaceState(null, '', `#${id}`);
  $('chat-none').hidden = true;
  $('chat-view').hidden = false;
  $('app').classList.add('show-chat');
  if (!c.loaded && !c.loading && S.client.state === 'ready') loadHistory(c);
  markReadIfOpen(c);
  renderList();
  renderChat();
  if (window.matchMedia('(min-width: 721px)').matches) $('input').focus();
}

function closeConv() {
  S.open = null;
  $('app').classList.remove('show-chat');
  $('chat-view').hidden = true;
  $('chat-none').hidden = false;
  history.replaceState(null, '', location.pathname + location.search);
  renderList();
}

function startEdit(c, m) {
  S.editing = { conv: c.id, seq: m.ev.seq };
  $('editing').hidden = false;
  $('input').value = m.body;
  $('input').focus();
  autoGrow();
}

function cancelEdit() {
  S.editing = null;
  $('editing').hidden = true;
}

function autoGrow() {
  const t = $('input');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
}

function submit() {
  const body = $('input').value.replace(/\s+$/, '');
  if (!body.trim() || !S.open) return;
  try {
    if (S.editing && S.editing.conv === S.open) S.client.edit(S.open, S.editing.seq, body);
    else S.client.send(S.open, body);
  } catch (err) {
    alert(err.message);
    return;
  }
  cancelEdit();
  $('input').value = '';
  autoGrow();
  S.stickBottom = true;
  scheduleRender();
}

async function createConversation(e) {
  e.preventDefault();
  const err = $('new-conv-error');
  err.hidden = true;
  const users = $('new-conv-users').value.split(/[\s,]+/).map((u) => u.trim()).filter(Boolean).filter((u) => u !== S.me);
  const bad = users.find((u) => !ID_RE.test(u));
  let name = $('new-conv-name').value.trim();
  const fail = (msg) => {
    err.textContent = msg;
    err.hidden = false;
  };
  if (!users.length) return fail('Name at least one other user.');
  if (bad) return fail(`"${bad}" is not a user id (1-64 of A-Z a-z 0-9 _ -).`);
  if (!name) {
    if (users.length === 1) name = `dm-${[S.me, users[0]].sort().join('-')}`.slice(0, 64);
    else name = `group-${Date.now().toString(36)}`;
  }
  if (!ID_RE.test(name)) return fail('The name may hold only A-Z a-z 0-9 _ - (at most 64).');
  // A dm-... id is read back as "the other person": keep it to the two people it names.
  const members = [S.me, ...new Set(users)];
  let res;
  try {
    res = await fetch(`/dev/conv?conv=${encodeURIComponent(name)}&members=${members.map(encodeURIComponent).join(',')}`, { cache: 'no-store' });
  } catch {
    return fail('The server cannot be reached.');
  }
  const j = await res.json().catch(() => ({}));
  if (!res.ok) return fail(j.error || `Could not create it (HTTP ${res.status}).`);
  const c = conv(name);
  rememberMembers(c, members);
  $('new-conv').hidden = true;
  $('new-conv').reset();
  refreshConversations();
  openConv(name);
}

function setup() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const user = $('login-user').value.trim();
    if (!ID_RE.test(user)) {
      showLogin('A user id is 1-64 characters of A-Z a-z 0-9 _ -.');
      return;
    }
    signIn(user);
  });
  $('new-conv-btn').addEventListener('click', () => {
    $('new-conv').hidden = !$('new-conv').hidden;
    if (!$('new-conv').hidden) $('new-conv-users').focus();
  });
  $('new-conv-cancel').addEventListener('click', () => {
    $('new-conv').hidden = true;
  });
  $('new-conv').addEventListener('submit', createConversation);
  $('logout-btn').addEventListener('click', () => {
    if (S.client) S.client.close();
    localStorage.removeItem('chat-demo:user');
    location.hash = '';
    location.reload();
  });
  $('back-btn').addEventListener('click', closeConv);
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === 'Escape' && S.editing) {
      cancelEdit();
      $('input').value = '';
    }
  });
  $('input').addEventListener('input', () => {
    autoGrow();
    if (S.open && $('input').value.trim()) S.client.typing(S.open);
  });
  $('edit-cancel').addEventListener('click', () => {
    cancelEdit();
    $('input').value = '';
  });
  $('load-earlier').addEventListener('click', () => {
    const c = conv(S.open);
    S.keepOffset = true;
    loadHistory(c, true);
  });
  document.addEventListener('visibilitychange', () => {
    if (S.open) markReadIfOpen(conv(S.open));
  });
  setInterval(() => {
    // typing indicators and "last seen" age
    if (S.client) scheduleRender();
  }, 30000);

  const params = new URLSearchParams(location.search);
  const user = params.get('user') || localStorage.getItem('chat-demo:user');
  if (user && ID_RE.test(user)) signIn(user);
  else showLogin();
}

setup();
