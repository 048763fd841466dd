// Type declarations of chat.js, the browser SDK of the chat platform (protocol version 1).
// See docs/sdk.md for the guide.

/** Connection state: `idle` before connect(), `connecting` (socket opening), `syncing` (hello
 * received, sync running), `ready` (synced, live), `reconnecting` (waiting out the backoff),
 * `closed` (close() was called). */
export type ChatState = 'idle' | 'connecting' | 'syncing' | 'ready' | 'reconnecting' | 'closed';

export type EventKind = 'text' | 'edit' | 'delete' | 'reaction' | 'system';

/** One event of a conversation, as the server's `msg` frame carries it (without `type`). */
export interface ChatEvent {
  conv: string;
  /** Per conversation, from 1, growing by exactly 1. */
  seq: number;
  /** Server id (ULID); unique. */
  id: string;
  /** The client id the sender gave it. */
  cmid: string;
  from: string;
  /** Server time of the commit, ms since the epoch. */
  ts: number;
  kind: EventKind;
  body: string;
  meta?: Record<string, unknown>;
  /** edit, delete, reaction: the seq of the message changed. */
  target?: number;
  /** reaction only. */
  emoji?: string;
  on?: boolean;
  /** history only: the message was deleted since. */
  deleted?: boolean;
  /** How the SDK got it: pushed live, replayed by sync, or fetched to fill a gap. Set on
   * `message` events only. */
  source?: 'live' | 'sync' | 'history';
}

export interface Ack {
  conv: string;
  cmid: string;
  seq: number;
  id: string;
  kind: OutboxKind;
}

export type OutboxKind = 'text' | 'edit' | 'delete' | 'reaction';

/** Something the user sent that waits in the outbox until the server acks it. */
export interface OutboxItem {
  cmid: string;
  conv: string;
  kind: OutboxKind;
  body?: string;
  meta?: Record<string, unknown>;
  target?: number;
  emoji?: string;
  on?: boolean;
  user: string | null;
  /** Date.now() when it was queued. */
  createdAt: number;
  /** How many times it went to the server so far. */
  attempts: number;
  /** Resolves with the ack; rejects with a ChatError for a refusal that a retry cannot fix
   * (not_member, too_large, bad_request, not_found). Items loaded from storage after a reload
   * get a new promise. */
  done: Promise<Ack>;
  /** Resolves once the item is in IndexedDB (so it survives a reload). */
  stored: Promise<void>;
}

export interface Receipt {
  conv: string;
  user: string;
  read: number;
  seen: number;
}

export interface Presence {
  online: boolean;
  last_seen: number | null;
}

export interface ConversationSummary {
  conv: string;
  kind: string;
  last_seq: number;
  seen: number;
  read: number;
  unread: number;
}

export interface HistoryPage {
  conv: string;
  /** Newest first (seq descending), as the server sends them. */
  messages: ChatEvent[];
  more: boolean;
}

export interface MembersChange {
  conv: string;
  added: string[];
  removed: string[];
  /** The conversation was deleted. */
  deleted: boolean;
}

export interface ChatEvents {
  /** Every event of every conversation of the user, once, in seq order per conversation. */
  message: ChatEvent;
  /** A member's read cursor moved (the user's own devices included). */
  receipt: Receipt;
  typing: { conv: string; user: string };
  /** Presence of users asked for with presence(): the answer and later changes. */
  presence: { users: Record<string, Presence> };
  members: MembersChange;
  state: { state: ChatState; previous: ChatState; attempt?: number; delay?: number };
  /** The socket is up and the server said hello (a sync follows). */
  connected: { user: string; session: string };
  /** A sync finished (the state is then `ready`). */
  synced: Record<string, never>;
  /** An outbox item was queued (also each item loaded from storage at start). */
  outbox: { item: OutboxItem; status: 'queued' };
  /** An outbox item was acked (the server stored it). */
  ack: Ack;
  /** The server asked for a retry of an outbox item (it is sent again by itself). */
  retry: { cmid: string; conv: string; code: string; attempts: number };
  /** An outbox item was refused for good and left the outbox. */
  failed: { item: OutboxItem; code: string; message: string };
  /** The answer to conversations(). */
  conversations: ConversationSummary[];
  /** A gap in a conversation is being filled through history (or was skipped). */
  gap: { conv: string; from: number; to: number; skipped?: boolean };
  /** getToken() gave a new token. */
  token: { exp: number | null };
  /** A protocol error that no request waits for. */
  error: ChatError;
}

export interface ChatOptions {
  /** ws:// or wss:// URL of the endpoint; default: /ws on the page's host. */
  url?: string;
  /** A JWT (HS256, claims sub and exp). */
  token?: string;
  /** Gives a fresh JWT: called before the token's exp (decoded from its payload) and after
   * connections fail twice in a row before the hello. One of token and getToken is required. */
  getToken?: () => Promise<string> | string;
  /** Keep the outbox and cursors in IndexedDB (default true; memory when IndexedDB is missing). */
  persist?: boolean;
  /** IndexedDB database name prefix; the database is `${dbName}:${user}` (default 'chat-sdk'). */
  dbName?: string;
  /** Send `seen` for events as they are handed on (default true). */
  autoSeen?: boolean;
  /** Batch `seen` frames for this many ms (default 250). */
  seenDelay?: number;
  /** Send `typing` at most once per this many ms per conversation (default 3000). */
  typingInterval?: number;
  /** Reconnect delays: the n-th attempt waits a random time up to min(max, initial * factor^n)
   * (default 500 ms, 30 s, 2). */
  backoff?: { initial?: number; max?: number; factor?: number };
  /** Give up on a socket that sent no hello after this many ms (default 10000). */
  helloTimeout?: number;
  /** Ping after this many quiet ms (default 15000) ... */
  pingInterval?: number;
  /** ... and drop the socket when nothing came back this many ms after it (default 10000). */
  pingTimeout?: number;
  /** Send an outbox item again when no ack or error came for this many ms (default 15000). */
  ackTimeout?: number;
  /** history() and conversations() fail after this many ms (default 15000). */
  requestTimeout?: number;
  /** Refresh the token this many seconds before exp (default 60; 20% of a shorter life). */
  refreshBefore?: number;
  /** Gap fills fetch at most this many events a request (default 100, the server's cap). */
  historyPage?: number;
  /** A WebSocket class (default globalThis.WebSocket). */
  WebSocket?: unknown;
  /** An IDBFactory (default globalThis.indexedDB); null for memory. */
  indexedDB?: IDBFactory | null;
  /** Where to listen for online/offline/pagehide (default globalThis.window); null for none. */
  window?: EventTarget | null;
  /** Debug output. */
  logger?: (...args: unknown[]) => void;
}

export class ChatError extends Error {
  /** The server's code (not_member, too_large, bad_request, not_found, unavailable,
   * rate_limited) or the SDK's (disconnected, timeout). */
  code: string;
  ref?: string;
}

export class ChatClient {
  constructor(options: ChatOptions);
  /** The user id (the token's sub, then the server's hello). */
  readonly user: string | null;
  /** The server's session id of the current connection. */
  readonly session: string | null;
  readonly state: ChatState;
  /** server_time of the last hello minus Date.now() then. */
  readonly serverTimeOffset: number;
  /** The current token. */
  readonly token: string | null;

  on<K extends keyof ChatEvents>(name: K, fn: (payload: ChatEvents[K]) => void): () => void;
  off<K extends keyof ChatEvents>(name: K, fn: (payload: ChatEvents[K]) => void): void;

  /** Loads the outbox and cursors, starts connecting (for good, with reconnects); resolves at the
   * first `ready`. */
  connect(): Promise<void>;
  /** Resolves when the state is (or next becomes) `ready`. */
  ready(): Promise<void>;
  /** Drops the socket and connects again now. */
  reconnect(): void;
  /** Stops for good; the outbox stays stored for the next client of this user. */
  close(): void;

  /** Queues a text message; it is sent now or as soon as the client is connected, and again
   * with the same cmid until acked. */
  send(conv: string, body: string, meta?: Record<string, unknown>): OutboxItem;
  edit(conv: string, target: number, body: string): OutboxItem;
  delete(conv: string, target: number): OutboxItem;
  react(conv: string, target: number, emoji: string, on?: boolean): OutboxItem;
  /** Items not acked yet, oldest first. */
  pending(conv?: string): OutboxItem[];

  /** Delivery cursor to the server (sent by itself with autoSeen). */
  seen(conv: string, seq: number): void;
  /** Read cursor to the server (default seq: everything handed on in conv). */
  read(conv: string, seq?: number): void;
  /** Throttled typing notice; true when a frame went out. */
  typing(conv: string): boolean;
  /** Presence of users, watched from now on (re-asked after reconnects). */
  presence(users: string[]): Promise<Record<string, Presence>>;
  presenceOf(user: string): Presence | undefined;

  history(conv: string, options?: { before?: number; limit?: number }): Promise<HistoryPage>;
  conversations(): Promise<ConversationSummary[]>;
  ping(): boolean;

  /** Highest seq handed on in conv with nothing missing below it. */
  cursor(conv: string): number | undefined;
  cursors(): Record<string, number>;
  /** Highest read cursor of user in conv seen in receipts (and, for the user, conversations()). */
  readCursor(conv: string, user: string): number | undefined;
  /** { user: read } of conv from the receipts seen so far. */
  receipts(conv: string): Record<string, number>;
}

/** The payload of a JWT (not verified). */
export function decodeToken(token: string): Record<string, unknown> | null;
/** A new client message id. */
export function newCmid(): string;

export default ChatClient;
