// Renders table panels to PNG files with @grafana/ui's Table in headless Chromium.
//
// node pictures.mjs <pictures.json> <output directory> [11.3|latest]: pictures.json is a list
// of {id, file, panel, dataFrames, width, height} (crmsync_testing/pictures.py writes it);
// prints a JSON line {file, text} per picture. Uses
// Debian's chromium (CHROMIUM, default /usr/bin/chromium) through playwright-core, in a fresh
// profile with the network features off.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const [picturesFile, outDir, version = '11.3'] = process.argv.slice(2);
const pictures = JSON.parse(readFileSync(picturesFile, 'utf8'));
const profile = mkdtempSync(path.join(tmpdir(), 'crmsync-chromium-'));

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
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
  viewport: { width: 1600, height: 1000 },
  // A browser in the en-US locale and UTC: the pictures read the same wherever they are drawn.
  locale: 'en-US',
  timezoneId: 'UTC',
  deviceScaleFactor: 1,
});
try {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  // Resources the page asks for beyond the table (Grafana's icon files) are not served: their
  // console errors are no failure.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      errors.push(message.text());
    }
  });
  // Served from an http origin of its own (the page needs localStorage), from this process:
  // nothing reaches the network.
  const files = {
    '/': ['text/html', '<!doctype html><html><head><meta charset="utf-8"><script src="/table.js"></script></head><body style="margin:0"><div id="root"></div></body></html>'],
    '/table.js': ['text/javascript', readFileSync(path.join(here, 'dist', `table-${version}.js`))],
  };
  await page.route('**/*', (route) => {
    const file = files[new URL(route.request().url()).pathname];
    return file ? route.fulfill({ contentType: file[0], body: file[1] }) : route.abort();
  });
  await page.goto('http://pictures.invalid/');
  if (errors.length) {
    throw new Error(`the page failed to load: ${errors.join('\n')}`);
  }
  await page.evaluate((list) => window.renderPanels(list), pictures);
  for (const picture of pictures) {
    const element = page.locator(`#${picture.id}`);
    // The table draws its rows once it has measured itself: wait for a cell (or "No data").
    try {
      await element.locator('[role="cell"], [data-no-data]').first().waitFor({ timeout: 15000 });
    } catch (error) {
      throw new Error(`${picture.file} did not draw: ${[error, ...errors].join('\n')}`);
    }
    const file = path.join(outDir, picture.file);
    await element.screenshot({ path: file });
    // One JSON line per picture: the file, and the text a person reads in it.
    console.log(JSON.stringify({ file, text: await element.innerText() }));
  }
  if (errors.length) {
    throw new Error(`the page failed: ${errors.join('\n')}`);
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
