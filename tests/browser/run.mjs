#!/usr/bin/env node
// Runs the browser tests (ctest: label "browser"): `node --test` over tests/browser/*.test.mjs,
// one file at a time. The stack's address comes from CHAT_GATEWAY_LISTEN (ctest runs with the
// settings of $CHAT_HOME/env exported). When no stack answers there, only the tests that need none
// (sdk.test.mjs, the SDK against a fake server) run, and the exit code is 77 (ctest: skipped).
//
//   node tests/browser/run.mjs [FILES...]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const listen = process.env.CHAT_GATEWAY_LISTEN || '127.0.0.1:8080';

function fail(msg) {
  console.error(`browser tests: ${msg}`);
  process.exit(1);
}

if (!fs.existsSync(path.join(here, 'node_modules', 'playwright-core'))) {
  fail(`playwright-core is not installed in ${here}/node_modules (scripts/test installs it: chat_install_browser in scripts/lib/install.sh; by hand: npm ci --prefix ${here})`);
}
const chromium = process.env.CHAT_CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(chromium)) fail(`${chromium} is missing (apt-get install chromium)`);

async function stackAnswers() {
  try {
    const res = await fetch(`http://${listen}/readyz`, { signal: AbortSignal.timeout(3000) });
    return res.status === 200;
  } catch {
    return false;
  }
}

function runTests(files) {
  const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
    cwd: here,
    stdio: 'inherit',
    env: process.env,
  });
  return r.status === null ? 1 : r.status;
}

const args = process.argv.slice(2);
const all = args.length
  ? args.map((f) => path.resolve(f))
  : fs.readdirSync(here).filter((f) => f.endsWith('.test.mjs')).sort().map((f) => path.join(here, f));

if (!(await stackAnswers())) {
  console.log(`browser tests: no stack answers at http://${listen}/readyz; running only the tests that need none`);
  const offline = all.filter((f) => path.basename(f) === 'sdk.test.mjs');
  const rc = offline.length ? runTests(offline) : 0;
  if (rc !== 0) process.exit(rc);
  console.log('browser tests: skipped (no stack)');
  process.exit(77);
}

const dev = await fetch(`http://${listen}/dev/token?user=probe`).catch(() => null);
if (!dev || dev.status !== 200) fail(`http://${listen}/dev/token does not answer 200: the stack must run with CHAT_DEV_MODE=1`);

process.exit(runTests(all));
