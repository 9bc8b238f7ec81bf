// The browser-automation client origin/tests/console.rs drives the console with: puppeteer-core,
// connected to the Chromium the test started (so that the test owns, and ends, that process).
// It reads one JSON command a line on standard input and answers each with one JSON line on
// standard output; the test asserts, this script only acts and reports what the page shows.
//
// Usage: node driver.mjs BROWSER_WS_ENDPOINT CONSOLE_URL
//
//   {"op": "sign_in", "login": NAME}        a fresh browser context (no cookies, no storage)
//                                           opens the console, follows "Sign in with single
//                                           sign-on" through the provider's login and consent
//                                           pages and back: {"page", "whoami"}
//   {"op": "look", "page", "view", "wait_for"?}
//                                           shows a view (campaigns, vehicles, audit), waits up
//                                           to 15 s for `wait_for` in its text: {"text",
//                                           "buttons" (visible ones), "rows", "html"}
//   {"op": "sign", "page", "campaign", "key"}
//                                           approves/resumes the campaign with the key file:
//                                           {"message", "failed"}
//   {"op": "screenshot", "page", "path"}    a full-page PNG
//
// A command that fails answers {"error": "..."}. The script exits when its input closes.
import { createInterface } from 'node:readline';

import puppeteer from 'puppeteer-core';

const [endpoint, consoleUrl] = process.argv.slice(2);
const browser = await puppeteer.connect({
  browserWSEndpoint: endpoint,
  acceptInsecureCerts: false,
  defaultViewport: { width: 1400, height: 1000 },
});
const pages = [];
// Where the pages went and which requests failed: told with an error, to explain it.
const trail = [];
const TIMEOUT = 20_000;

async function signIn({ login }) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('requestfailed', (r) => trail.push(`${login}: ${r.url()} failed: ${r.failure()?.errorText}`));
  page.on('framenavigated', (frame) => trail.push(`${login}: at ${frame.url()}`));
  await page.goto(consoleUrl, { waitUntil: 'load' });
  await page.waitForSelector('#sso', { visible: true });
  await Promise.all([page.waitForNavigation(), page.click('#sso')]);
  // The provider's pages: its login form, then its consent page, until it sends the browser
  // back to the console with a code.
  for (let step = 0; step < 6 && !page.url().startsWith(consoleUrl); step += 1) {
    if (await page.$('input[name=login]')) {
      await page.type('input[name=login]', login);
      await page.type('input[name=password]', 'any password');
    }
    if (!(await page.$('button[type=submit]'))) {
      throw new Error(`the provider shows no form at ${page.url()}: ${await page.$eval('body', (b) => b.innerText)}`);
    }
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  }
  await page.waitForSelector('#whoami');
  pages.push(page);
  return { page: pages.length - 1, whoami: await page.$eval('#who', (e) => e.innerText) };
}

async function look({ page: index, view, wait_for: waitFor }) {
  const page = pages[index];
  await page.evaluate((v) => { location.hash = v; }, view);
  await page.waitForFunction((v) => {
    const element = document.querySelector(`[data-view-of="${v}"]`);
    return element && !element.hidden && element.children.length > 0;
  }, {}, view);
  if (waitFor) {
    await page
      .waitForFunction((v, t) => document.querySelector(`[data-view-of="${v}"]`).innerText.includes(t), { timeout: 15_000 }, view, waitFor)
      .catch(() => {});
  }
  return page.evaluate((v) => {
    const element = document.querySelector(`[data-view-of="${v}"]`);
    const visible = (e) => e.checkVisibility();
    return {
      text: element.innerText,
      html: element.innerHTML,
      buttons: [...document.querySelectorAll('button, input[type=submit], input[type=button]')]
        .filter(visible)
        .map((b) => b.innerText || b.value),
      rows: [...element.querySelectorAll('tr')].map((r) => [...r.cells].map((c) => c.innerText)),
      message: document.getElementById('message').innerText,
    };
  }, view);
}

async function sign({ page: index, campaign, key }) {
  const page = pages[index];
  await page.evaluate(() => { location.hash = 'campaigns'; document.getElementById('message').textContent = ''; });
  const form = await page.waitForSelector(`[data-campaign="${campaign}"] form[data-action="sign"]`, { visible: true });
  const input = await form.$('input[type=file]');
  await input.uploadFile(key);
  await (await form.$('button[type=submit]')).click();
  await page.waitForFunction(() => document.getElementById('message').innerText.length > 0);
  return page.$eval('#message', (e) => ({ message: e.innerText, failed: e.classList.contains('failed') }));
}

async function screenshot({ page: index, path }) {
  await pages[index].screenshot({ path, fullPage: true });
  return { path };
}

const commands = { sign_in: signIn, look, sign, screenshot };

for await (const line of createInterface({ input: process.stdin })) {
  let answer;
  try {
    const command = JSON.parse(line);
    const run = commands[command.op];
    if (!run) throw new Error(`no command ${command.op}`);
    answer = await run(command);
  } catch (e) {
    answer = { error: `${e && e.stack ? e.stack : e}\n${trail.slice(-20).join('\n')}` };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await browser.disconnect();
process.exit(0);
