// Bundles the harness once per Grafana frontend version, and the table page for the pictures.
//
// The packages of Grafana 11.3 are installed under aliases (package.json); each bundle maps the
// package names to its own set, so scenes 5.20 runs with @grafana/data 11.3 and React 18, the
// newest scenes with the newest @grafana/data and React 19. `node build.mjs` rebuilds only
// what is older than its sources or package-lock.json.
import { readFileSync, statSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as esbuild from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, 'node_modules');

/** The Grafana frontends the dashboards are checked with: bundle name, package aliases. */
export const VERSIONS = {
  '11.3': {
    '@grafana/scenes': 'scenes-grafana-11-3',
    '@grafana/data': 'grafana-data-11-3',
    '@grafana/e2e-selectors': 'grafana-e2e-selectors-11-3',
    '@grafana/prometheus': 'grafana-prometheus-11-3',
    '@grafana/runtime': 'grafana-runtime-11-3',
    '@grafana/schema': 'grafana-schema-11-3',
    '@grafana/ui': 'grafana-ui-11-3',
    react: 'react-18',
    'react-dom': 'react-dom-18',
    'react-router-dom': 'react-router-dom-5',
  },
  latest: {},
};
/** The version whose Table draws the pictures: the Grafana of docker-compose.yml. */
export const PICTURES_VERSION = '11.3';

function versionOf(name, alias) {
  const manifest = path.join(modules, alias[name] ?? name, 'package.json');
  return JSON.parse(readFileSync(manifest, 'utf8')).version;
}

// Packages with both an ES and a CommonJS build would be bundled twice when some importers
// `import` them and others `require` them, each copy with its own singletons (the services
// @grafana/runtime holds, registries). Every package import is resolved as `require` resolves
// it, so there is one copy. (It also lets @grafana/plugin-compat probe @grafana/runtime for
// functions newer Grafanas have: its CommonJS build reads them as properties.)
const oneCopyPerPackage = {
  name: 'one-copy-per-package',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, async (args) => {
      if (args.kind === 'require-call' || args.pluginData === 'as-require') {
        return undefined;
      }
      const resolved = await build.resolve(args.path, {
        kind: 'require-call',
        resolveDir: args.resolveDir,
        importer: args.importer,
        pluginData: 'as-require',
      });
      return resolved.errors.length ? undefined : { path: resolved.path, external: resolved.external };
    });
  },
};

const assets = { '.css': 'empty', '.svg': 'empty', '.woff': 'empty', '.woff2': 'empty', '.png': 'empty' };

function newestSource() {
  const sources = readdirSync(path.join(here, 'src')).map((name) => path.join(here, 'src', name));
  return Math.max(
    ...[...sources, path.join(here, 'package-lock.json'), fileURLToPath(import.meta.url)].map(
      (file) => statSync(file).mtimeMs
    )
  );
}

function isCurrent(outfile, newest) {
  try {
    return statSync(outfile).mtimeMs >= newest;
  } catch {
    return false;
  }
}

export async function build({ force = false } = {}) {
  const newest = newestSource();
  const builds = [];
  for (const [version, alias] of Object.entries(VERSIONS)) {
    const versions = Object.fromEntries(
      ['@grafana/scenes', '@grafana/data', '@grafana/ui', '@grafana/prometheus', 'react'].map((name) => [
        name,
        versionOf(name, alias),
      ])
    );
    const common = {
      bundle: true,
      alias,
      absWorkingDir: here,
      nodePaths: [modules],
      loader: assets,
      logLevel: 'error',
      plugins: [oneCopyPerPackage],
      define: {
        'process.env.NODE_ENV': '"production"',
        GRAFANA_VERSIONS: JSON.stringify({ name: version, ...versions }),
      },
    };
    const harness = path.join(here, 'dist', `harness-${version}.cjs`);
    if (force || !isCurrent(harness, newest)) {
      builds.push(
        esbuild.build({
          ...common,
          entryPoints: [path.join(here, 'src', 'harness.js')],
          platform: 'node',
          format: 'cjs',
          // jsdom loads files of its own at run time: it stays a package of node_modules.
          external: ['jsdom'],
          target: 'node18',
          outfile: harness,
        })
      );
    }
    const page = path.join(here, 'dist', `table-${version}.js`);
    if (version === PICTURES_VERSION && (force || !isCurrent(page, newest))) {
      builds.push(
        esbuild.build({
          ...common,
          entryPoints: [path.join(here, 'src', 'table-page.jsx')],
          platform: 'browser',
          format: 'iife',
          target: 'chrome110',
          jsx: 'automatic',
          minify: true,
          outfile: page,
          define: { ...common.define, global: 'globalThis' },
        })
      );
    }
  }
  await Promise.all(builds);
  return builds.length;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const started = Date.now();
  const count = await build({ force: process.argv.includes('--force') });
  console.log(`${count} bundle(s) built in ${Date.now() - started} ms`);
}
