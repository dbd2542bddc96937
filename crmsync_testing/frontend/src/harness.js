// Runs dashboards through Grafana's frontend code and prints what it did, as JSON.
//
// stdin: {"datasources": [...], "dashboards": [...], "runs": [{"dashboard": <index>, "url":
// "var-object=lead&...", "from": ISO time, "to": ISO time, "answers": {...}, "prometheus": url,
// "labels": {...}}]} (tests/dashboards/grafana_frontend.py writes it). For each run the dashboard's variables take their state from the URL (as a link or
// a reload would give it), every panel's queries run through scenes and the datasources'
// frontend code, and the queries that reach the server are reported; with answers, the
// answered frames go on through the datasource, the panel's transformations and field config.
import './node-env.js';

import { sceneGraph } from '@grafana/scenes';

import { applyFieldConfig, frameToJSON, inspectCsv, tableView } from './panel.js';
import { buildScene, runScene } from './scene.js';
import { resetDatasources, startGrafana } from './services.js';

/* global GRAFANA_VERSIONS */

function variableStates(variables) {
  return Object.fromEntries(
    variables.map((variable) => [
      variable.state.name,
      {
        type: variable.state.type,
        // The state, not getValue(): "All" with a custom all value is an object there.
        value: variable.state.value ?? null,
        text: variable.state.text ?? null,
        options: variable.state.options?.map((option) => option.value) ?? null,
        url: variable.urlSync?.getUrlState() ?? null,
      },
    ])
  );
}

function errorsOf(data) {
  return (data?.errors ?? []).map((error) => error.message ?? String(error));
}

function summary(frames) {
  return frames.map((frame) => ({
    refId: frame.refId,
    length: frame.length,
    fields: frame.fields.map((field) => ({ name: field.name, type: field.type, labels: field.labels ?? {} })),
  }));
}

function panelResult({ panel, runner, transformer }, requests, { scene, view }) {
  const queryData = runner.state.data;
  const data = transformer.state.data;
  // What the field config's texts interpolate to (display names), for a page to draw the panel.
  const interpolations = {};
  const replaceVariables = (value, scopedVars, format) => {
    const text = sceneGraph.interpolate(runner, value, scopedVars, format);
    // Only texts that do not depend on the cell they are computed for.
    if (!format && !/\$\{?__(value|data|field|series)/.test(value)) {
      interpolations[value] = text;
    }
    return text;
  };
  const timeZone = sceneGraph.getTimeRange(scene).getTimeZone();
  const result = {
    id: panel.id,
    title: panel.title,
    // The title as the panel shows it, its variables replaced.
    shownTitle: sceneGraph.interpolate(runner, panel.title),
    type: panel.type,
    requests: requests.filter((request) => String(request.panel) === String(panel.id)).map((r) => r.body),
    state: data.state,
    errors: [...new Set([...errorsOf(queryData), ...errorsOf(data)])],
    // The frames as the datasource gave them, then after the panel's transformations.
    queryFrames: summary(queryData.series),
    frames: summary(data.series),
  };
  if (view) {
    const options = { replaceVariables, timeZone };
    result.table = tableView(applyFieldConfig(data.series, panel, options));
    result.csv = inspectCsv(queryData.series, panel, options);
    // The transformed frames, for a page that renders the panel (src/table-page.jsx).
    result.dataFrames = data.series.map(frameToJSON);
    result.interpolations = interpolations;
  }
  return result;
}

async function run(request, dashboards, server) {
  const dashboard = dashboards[request.dashboard];
  resetDatasources();
  server.configure(request);
  const built = buildScene(dashboard, request);
  try {
    await runScene(built);
  } catch (error) {
    return { dashboard: dashboard.uid, url: request.url, error: String(error?.message ?? error) };
  }
  return {
    dashboard: dashboard.uid,
    url: request.url,
    variables: variableStates(built.variables),
    panels: built.panels.map((panel) =>
      panelResult(panel, server.requests, { scene: built.scene, view: Boolean(request.answers) })
    ),
  };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const server = startGrafana(input);
  const runs = [];
  for (const request of input.runs) {
    runs.push(await run(request, input.dashboards, server));
  }
  // Scenes leaves timers behind (refresh pickers, lazy loaders): exit once the answer is out.
  process.stdout.write(JSON.stringify({ grafana: GRAFANA_VERSIONS, runs }), () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exit(1);
});
