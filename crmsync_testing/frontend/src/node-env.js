// The browser globals Grafana's packages expect when they are loaded, provided by jsdom in Node.
//
// This module is imported first by the Node entry, so it runs before any Grafana code. What it
// adds beyond jsdom is what Grafana's own Jest setup adds (public/test/setupTests.ts and
// jest-setup.ts in grafana/grafana): matchMedia, IntersectionObserver and ResizeObserver.
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><head></head><body></body></html>', {
  url: 'http://localhost:3000/',
  pretendToBeVisual: true,
});
const window = dom.window;

for (const key of Object.getOwnPropertyNames(window)) {
  if (!(key in globalThis)) {
    try {
      globalThis[key] = window[key];
    } catch {
      // A few window properties are getters that refuse to be copied; nothing needs them.
    }
  }
}
globalThis.window = window;
globalThis.document = window.document;
// uPlot dispatches a jsdom CustomEvent on the jsdom window at load: Node's own classes won't do.
globalThis.Event = window.Event;
globalThis.CustomEvent = window.CustomEvent;

class NoObserver {
  observe() {}
  unobserve() {}
  disconnect() {}
  takeRecords() {
    return [];
  }
}
window.IntersectionObserver = globalThis.IntersectionObserver = NoObserver;
window.ResizeObserver = globalThis.ResizeObserver = NoObserver;
window.matchMedia = globalThis.matchMedia = (query) => ({
  matches: false,
  media: query,
  onchange: null,
  addListener() {},
  removeListener() {},
  addEventListener() {},
  removeEventListener() {},
  dispatchEvent() {
    return false;
  },
});
