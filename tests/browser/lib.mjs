// Helpers of the browser tests: the stack's address, Debian's chromium through playwright-core,
// and the demo app's sign-in, conversations and messages as a user sees them.
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const LISTEN = process.env.CHAT_GATEWAY_LISTEN || '127.0.0.1:8080';
export const BASE = `http://${LISTEN}`;
export const CHROMIUM = process.env.CHAT_CHROMIUM || '/usr/bin/chromium';

/** A short id unique to this run, for user and conversation ids. */
export const RUN = `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;

/**
 * Debian's chromium, headless. Playwright gives every launch a new empty --user-data-dir of its
 * own; the background-networking flags keep chromium from dialling out (this machine refuses
 * those connections).
 */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Polls fn until it returns a truthy value; fails with `what` after timeout ms. */
export async function until(what, fn, timeout = 20000, every = 100) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(every);
  }
}

/** A new browser context (its own storage: a device) with the demo app signed in as user. */
export async function device(browser, user, { viewport = { width: 1100, height: 760 }, setup } = {}) {
  const context = await browser.newContext({ viewport });
  if (setup) await setup(context);
  const page = await context.newPage();
  const log = [];
  page.on('pageerror', (err) => log.push(`pageerror: ${err.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket connection|ERR_INTERNET_DISCONNECTED|favicon/.test(m.text())) log.push(`console: ${m.text()}`);
  });
  await page.goto(`${BASE}/`);
  await page.fill('#login-user', user);
  await page.click('#login-form button[type=submit]');
  await ready(page);
  return { user, context, page, log };
}

/** Waits until the app's SDK is connected and synced. */
export async function ready(page, timeout = 30000) {
  await page.waitForSelector('#conn[data-state="ready"]', { timeout });
}

/** Creates a conversation through the app's form; returns its id. */
export async function createConv(page, others, name = '') {
  await page.click('#new-conv-btn');
  await page.fill('#new-conv-users', others.join(', '));
  await page.fill('#new-conv-name', name);
  await page.click('#new-conv button[type=submit]');
  await page.waitForSelector('#chat-view:not([hidden])');
  return page.evaluate(() => window.chatDemo.state.open);
}

/** Opens a conversation from the list (waits for it to be listed). */
export async function openConv(page, conv, timeout = 20000) {
  const item = page.locator(`.conv[data-conv="${conv}"]`);
  await item.waitFor({ timeout });
  await item.click();
  await until(`conversation ${conv} open`, () => page.evaluate((c) => window.chatDemo.state.open === c, conv), timeout);
}

/** Types a message in the open conversation and sends it with Enter. */
export async function type(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

/** The messages of the open conversation as shown: [{seq, from, state, body, deleted, edited}]. */
export function shown(page) {
  return page.$$eval('#message-list .msg', (els) =>
    els.map((e) => ({
      seq: e.dataset.seq ? Number(e.dataset.seq) : null,
      cmid: e.dataset.cmid,
      from: e.dataset.from,
      state: e.dataset.state,
      deleted: e.dataset.deleted === 'true',
      edited: e.dataset.edited === 'true',
      body: e.querySelector('.body').textContent,
      reactions: [...e.querySelectorAll('.reaction')].map((r) => r.textContent),
    })),
  );
}

/** Waits until the open conversation shows a message whose body is `body`; returns it. */
export async function waitShown(page, body, timeout = 20000) {
  return until(`"${body}" shown`, async () => (await shown(page)).find((m) => m.body === body), timeout);
}

/** The unread badge of a conversation in the list (0 without one). */
export async function unreadOf(page, conv) {
  const v = await page.getAttribute(`.conv[data-conv="${conv}"]`, 'data-unread');
  return v === null ? null : Number(v);
}

/** The server's history of a conversation, through the page's SDK (every event, oldest first). */
export async function serverHistory(page, conv) {
  return page.evaluate(async (c) => {
    const all = [];
    let before;
    for (;;) {
      const res = await window.chatDemo.client.history(c, { before, limit: 100 });
      all.push(...res.messages);
      if (!res.more || res.messages.length === 0) break;
      before = res.messages[res.messages.length - 1].seq;
    }
    return all.reverse();
  }, conv);
}

/** The stack answers /readyz, and dev mode serves tokens. */
export async function stackAnswers() {
  try {
    const res = await fetch(`${BASE}/readyz`, { signal: AbortSignal.timeout(3000) });
    return res.status === 200;
  } catch {
    return false;
  }
}
