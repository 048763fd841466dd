// Browser tests of the demo app and the SDK against a running stack (the one scripts/test starts:
// its address from CHAT_GATEWAY_LISTEN). Debian's chromium, headless, through playwright-core.
// Each test uses users and conversations of its own (ids carry this run's id).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import {
  RUN, BASE, launch, device, createConv, openConv, type, shown, waitShown, until, unreadOf, serverHistory, ready,
} from './lib.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let browser;
const devices = [];

async function dev(user, opts) {
  const d = await device(browser, user, opts);
  devices.push(d);
  return d;
}

before(async () => {
  browser = await launch();
});

after(async () => {
  for (const d of devices) {
    if (d.log.length) console.log(`# page log of ${d.user}:\n#   ${d.log.join('\n#   ')}`);
  }
  if (browser) await browser.close();
});

describe('demo app', () => {
  test('two users chat both ways; the second user\'s other device sees the conversation and the read marks', async () => {
    const ann = `ann_${RUN}`;
    const ben = `ben_${RUN}`;
    const A = await dev(ann);
    const B = await dev(ben);

    const conv = await createConv(A.page, [ben]);
    assert.equal(conv, `dm-${[ann, ben].sort().join('-')}`);
    await type(A.page, 'Hi Ben, lunch today?');
    const a1 = await waitShown(A.page, 'Hi Ben, lunch today?');
    assert.equal(a1.from, ann);

    // Ben's list gets the new conversation with one unread message; opening it reads it.
    await B.page.locator(`.conv[data-conv="${conv}"]`).waitFor();
    await until('1 unread for Ben', async () => (await unreadOf(B.page, conv)) === 1);
    await openConv(B.page, conv);
    const b1 = await waitShown(B.page, 'Hi Ben, lunch today?');
    assert.equal(b1.from, ann);
    assert.equal(b1.state, 'theirs');
    await until('Ann sees her message read', async () => (await waitShown(A.page, 'Hi Ben, lunch today?')).state === 'read');
    await until('no unread for Ben', async () => (await unreadOf(B.page, conv)) === 0);

    // Ben's other device: the same conversation, nothing unread.
    const B2 = await dev(ben, { viewport: { width: 390, height: 780 } }); // a phone
    await openConv(B2.page, conv);
    await waitShown(B2.page, 'Hi Ben, lunch today?');
    assert.equal(await unreadOf(B2.page, conv), 0);

    // Ben answers from the first device; Ann (who has the conversation open) reads it, and both of
    // Ben's devices show Ben's message as his own and read.
    await type(B.page, 'Sure, 12:30 at the usual place?');
    const a2 = await waitShown(A.page, 'Sure, 12:30 at the usual place?');
    assert.equal(a2.from, ben);
    for (const d of [B, B2]) {
      await until(`${d === B ? 'Ben' : 'Ben\'s other device'} sees his answer read by Ann`, async () => {
        const m = await waitShown(d.page, 'Sure, 12:30 at the usual place?');
        return m.from === ben && m.state === 'read';
      });
    }

    // And from the other device the other way round.
    await type(B2.page, 'Sent from my phone');
    await waitShown(A.page, 'Sent from my phone');
    await until('Ben\'s first device shows the other device\'s message as read', async () => {
      const m = await waitShown(B.page, 'Sent from my phone');
      return m.from === ben && m.state === 'read';
    });

    // Ann's message read on one of Ben's devices counts on the other: with the conversation
    // closed on the second device, a new message is unread there until Ben reads it on the first.
    await B2.page.click('#back-btn'); // the phone layout: back to the list
    await B2.page.locator(`.conv[data-conv="${conv}"]`).waitFor();
    await type(A.page, 'Great, see you there');
    const last = await waitShown(B.page, 'Great, see you there');
    await until('Ben\'s other device: the message arrived, read on the first device, nothing unread', async () => {
      const has = await B2.page.evaluate(([c, s]) => window.chatDemo.state.convs.get(c).lastSeq >= s, [conv, last.seq]);
      return has && (await unreadOf(B2.page, conv)) === 0;
    });

    // The same messages, in the same order, everywhere.
    const want = ['Hi Ben, lunch today?', 'Sure, 12:30 at the usual place?', 'Sent from my phone', 'Great, see you there'];
    for (const d of [A, B]) {
      await until(`${d.user} shows the four messages in order`, async () => JSON.stringify((await shown(d.page)).map((m) => m.body)) === JSON.stringify(want));
    }
    await openConv(B2.page, conv);
    await until('the other device shows the four messages in order', async () => JSON.stringify((await shown(B2.page)).map((m) => m.body)) === JSON.stringify(want));
    for (const d of [A, B, B2]) assert.deepEqual(d.log, [], `no page errors for ${d.user}`);
  });

  test('typing, presence, edits, deletes and reactions reach the other side', async () => {
    const cat = `cat_${RUN}`;
    const dan = `dan_${RUN}`;
    const C = await dev(cat);
    const D = await dev(dan);
    const conv = await createConv(C.page, [dan], `plans_${RUN}`);
    assert.equal(conv, `plans_${RUN}`);
    await type(C.page, 'first draft');
    await type(C.page, 'to be deleted');
    await openConv(D.page, conv);
    const first = await waitShown(D.page, 'first draft');
    const doomed = await waitShown(D.page, 'to be deleted');

    // presence: Cat sees Dan online in the header
    await until('Dan online in Cat\'s header', async () => /online/.test(await C.page.textContent('#chat-sub')));

    // typing
    await D.page.fill('#input', 'thinking');
    await D.page.type('#input', '…');
    await until('Cat sees Dan typing', async () => /typing/.test(await C.page.textContent('#chat-sub')));
    await C.page.waitForSelector('#typing:not([hidden])');
    await D.page.fill('#input', '');

    // edit (through the message's edit action) and delete
    const mine = C.page.locator(`#message-list .msg[data-seq="${first.seq}"]`);
    await mine.hover();
    await mine.locator('.act-edit').click();
    await C.page.fill('#input', 'final draft');
    await C.page.press('#input', 'Enter');
    await until('Dan sees the edit', async () => {
      const m = (await shown(D.page)).find((x) => x.seq === first.seq);
      return m && m.body === 'final draft' && m.edited;
    });
    const gone = C.page.locator(`#message-list .msg[data-seq="${doomed.seq}"]`);
    await gone.hover();
    await gone.locator('.act-delete').click();
    await until('Dan sees the message deleted', async () => {
      const m = (await shown(D.page)).find((x) => x.seq === doomed.seq);
      return m && m.deleted && m.body === 'This message was deleted';
    });

    // reaction from Dan
    const theirs = D.page.locator(`#message-list .msg[data-seq="${first.seq}"]`);
    await theirs.hover();
    await theirs.locator('.actions button[title="React 👍"]').click();
    await until('Cat sees the reaction', async () => {
      const m = (await shown(C.page)).find((x) => x.seq === first.seq);
      return m && m.reactions.includes('👍 1');
    });

    // Dan leaves: Cat sees him offline (last seen)
    await D.context.close();
    await until('Cat sees Dan offline', async () => /seen .*ago|seen just now/.test(await C.page.textContent('#chat-sub')), 40000);
    devices.splice(devices.indexOf(D), 1);
  });

  test('a device offline while 50 messages are sent shows all 50, in order, once', async () => {
    const eve = `eve_${RUN}`;
    const fay = `fay_${RUN}`;
    const E = await dev(eve);
    const F = await dev(fay);
    const conv = await createConv(E.page, [fay]);
    await type(E.page, 'before');
    await openConv(F.page, conv);
    await waitShown(F.page, 'before');

    await F.context.setOffline(true);
    await until('Fay\'s app notices it is offline', async () => (await F.page.getAttribute('#conn', 'data-state')) === 'reconnecting');

    const bodies = Array.from({ length: 50 }, (_, i) => `burst ${String(i + 1).padStart(2, '0')}`);
    for (const b of bodies) await type(E.page, b);
    await until('all 50 acked on Eve\'s side', async () => {
      const m = await shown(E.page);
      return m.filter((x) => x.body.startsWith('burst ') && x.state !== 'pending').length === 50;
    }, 60000);
    // Fay saw none of it while offline.
    assert.equal((await shown(F.page)).filter((m) => m.body.startsWith('burst ')).length, 0);

    await F.context.setOffline(false);
    await ready(F.page, 40000);
    await until('Fay shows the 50 messages', async () => (await shown(F.page)).filter((m) => m.body.startsWith('burst ')).length >= 50, 40000);
    await sleep(1000); // anything repeated would show up by now
    const got = await shown(F.page);
    assert.deepEqual(got.map((m) => m.body), ['before', ...bodies], 'every message once, in order');
    const seqs = got.map((m) => m.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.equal(new Set(seqs).size, seqs.length);
    // and they count as read once shown: Eve's last message gets the read mark
    await until('Eve sees the burst read', async () => (await shown(E.page)).at(-1).state === 'read', 20000);
  });

  test('messages typed offline are sent after reconnecting, exactly once, even across a reload (IndexedDB outbox)', async () => {
    const gus = `gus_${RUN}`;
    const hal = `hal_${RUN}`;
    // Gus's WebSocket goes through a route the test can cut: closed at once while `cut`, so the
    // page loads (HTTP) while the chat server stays out of reach.
    let cut = false;
    const G = await dev(gus, {
      setup: (context) =>
        context.routeWebSocket(/\/ws(\?|$)/, (ws) => {
          if (cut) {
            ws.close({ code: 1011, reason: 'cut by the test' });
            return;
          }
          ws.connectToServer();
        }),
    });
    const H = await dev(hal);
    const conv = await createConv(G.page, [hal]);
    await type(G.page, 'online hello');
    await openConv(H.page, conv);
    await waitShown(H.page, 'online hello');

    // 1. offline, typed, back online: sent once.
    cut = true;
    await G.context.setOffline(true);
    await until('Gus offline', async () => (await G.page.getAttribute('#conn', 'data-state')) !== 'ready');
    await type(G.page, 'typed while offline');
    const p1 = await waitShown(G.page, 'typed while offline');
    assert.equal(p1.state, 'pending');
    cut = false;
    await G.context.setOffline(false);
    await waitShown(H.page, 'typed while offline', 30000);

    // 2. offline, typed, the page reloaded before it could go out: it is still there after the
    // reload (from IndexedDB) and goes out once the server is reachable.
    cut = true;
    await G.context.setOffline(true);
    await until('Gus offline again', async () => (await G.page.getAttribute('#conn', 'data-state')) !== 'ready');
    await type(G.page, 'survives a reload');
    assert.equal((await waitShown(G.page, 'survives a reload')).state, 'pending');
    await G.page.evaluate(() => Promise.all(window.chatDemo.client.pending().map((p) => p.stored)));
    await G.context.setOffline(false); // HTTP again, the WebSocket still cut
    await G.page.reload();
    await G.page.waitForSelector('#chat-view:not([hidden])');
    const after = await waitShown(G.page, 'survives a reload', 10000);
    assert.equal(after.state, 'pending', 'shown from the stored outbox, not sent yet');
    assert.equal(await G.page.evaluate(() => window.chatDemo.client.pending().length), 1);
    await sleep(1500);
    assert.equal((await shown(H.page)).filter((m) => m.body === 'survives a reload').length, 0, 'not sent while cut');

    cut = false;
    await waitShown(H.page, 'survives a reload', 40000);
    await until('Gus\'s outbox empty', async () => (await G.page.evaluate(() => window.chatDemo.client.pending().length)) === 0, 20000);
    await until('Gus shows it acked', async () => (await waitShown(G.page, 'survives a reload')).state !== 'pending');
    await sleep(1000);

    // Exactly once: on both screens and in the server's history.
    for (const d of [G, H]) {
      const bodies = (await shown(d.page)).map((m) => m.body);
      assert.deepEqual(bodies, ['online hello', 'typed while offline', 'survives a reload'], `${d.user} shows each once`);
    }
    const hist = (await serverHistory(H.page, conv)).filter((m) => m.kind === 'text').map((m) => m.body);
    assert.deepEqual(hist, ['online hello', 'typed while offline', 'survives a reload'], 'the server stored each once');
    // After another reload nothing is left to send.
    await G.page.reload();
    await ready(G.page);
    assert.equal(await G.page.evaluate(() => window.chatDemo.client.pending().length), 0);
  });

  test('screenshot of the demo app (docs/screenshot-demo.png)', async () => {
    // Friendly names for the picture; a second run on the same stack gets ids with a suffix.
    const [maya, leo, priya, tom, sara] = ['maya', 'leo', 'priya', 'tom', 'sara'];
    const create = async (id, members) => {
      const res = await fetch(`${BASE}/dev/conv?conv=${id}&members=${members.join(',')}`);
      const j = await res.json();
      assert.equal(res.status, 200, JSON.stringify(j));
      return j.created;
    };
    const sfx = (await create('product-launch', [maya, leo, priya])) ? '' : `-${RUN}`;
    const launchId = `product-launch${sfx}`;
    const design = `design-review${sfx}`;
    const dmLeo = `dm-leo-maya${sfx}`;
    const dmPriya = `dm-maya-priya${sfx}`;
    if (sfx) await create(launchId, [maya, leo, priya]);
    await create(design, [maya, tom, sara]);
    await create(dmLeo, [maya, leo]);
    await create(dmPriya, [maya, priya]);

    const M = await dev(maya, { viewport: { width: 1280, height: 800 } });
    const L = await dev(leo);
    const P = await dev(priya);
    const T = await dev(tom);
    const sdk = (d) => (fn, ...args) => d.page.evaluate(fn, args);
    const say = async (d, conv, body) => {
      const ack = await sdk(d)(([c, b]) => window.chatDemo.client.send(c, b).done, conv, body);
      return ack.seq;
    };

    await say(P, dmPriya, 'Can you send me the press kit?');
    await openConv(M.page, dmPriya);
    await say(M, dmPriya, 'Sent! Check your inbox 📬');
    await say(P, dmPriya, 'Thanks!');
    await say(T, design, 'New mockups are up for review');
    await say(T, design, 'Mostly the onboarding screens');
    await say(L, dmLeo, 'See you at 3 for the demo?');

    await openConv(M.page, launchId);
    await say(L, launchId, 'Morning! The release build is green 🎉');
    await say(P, launchId, 'Nice. Are the store screenshots done?');
    const s3 = await say(M, launchId, 'Almost, uploading after lunch');
    await sdk(M)(([c, s]) => window.chatDemo.client.edit(c, s, 'Almost done, I\'ll upload them after lunch').done, launchId, s3);
    await say(L, launchId, 'Can someone also update the changelog?');
    const s5 = await say(P, launchId, 'I can take it');
    await sdk(P)(([c, s]) => window.chatDemo.client.delete(c, s).done, launchId, s5);
    const s6 = await say(M, launchId, 'Changelog is updated, release notes too ✅');
    await sdk(L)(([c, s]) => window.chatDemo.client.react(c, s, '❤️').done, launchId, s6);
    await sdk(P)(([c, s]) => window.chatDemo.client.react(c, s, '🎉').done, launchId, s6);
    await openConv(L.page, launchId);
    await openConv(P.page, launchId);
    await until('read marks on Maya\'s messages', async () => (await shown(M.page)).filter((m) => m.from === maya).every((m) => m.state === 'read'));
    await L.page.fill('#input', 'Great work everyone');
    await L.page.type('#input', '!');
    await M.page.waitForSelector('#typing:not([hidden])');
    await M.page.mouse.move(0, 0);
    await sleep(300);
    // docs/screenshot-demo.png from a stack where the names were fresh (scripts/test's always is);
    // a rerun on the same stack (ids with a suffix) writes beside the other temporary files.
    const out = process.env.CHAT_SCREENSHOT ||
      (sfx ? path.join(os.tmpdir(), `screenshot-demo-${RUN}.png`) : path.join(ROOT, 'docs', 'screenshot-demo.png'));
    fs.mkdirSync(path.dirname(out), { recursive: true });
    await M.page.screenshot({ path: out });
    assert.ok(fs.statSync(out).size > 10000);
    console.log(`# screenshot: ${out}`);
  });
});
