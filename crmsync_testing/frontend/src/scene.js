// A dashboard's JSON loaded into @grafana/scenes objects, as Grafana's dashboard scene loader does.
//
// The variable and data-provider construction follows Grafana's
// public/app/features/dashboard-scene/serialization/transformSaveModelToScene.ts
// (createSceneVariableFromVariableModel, createPanelDataProvider); everything else (variable
// options and validation, URL state, interpolation, query running, transformations) is scenes'
// own code.
import { LoadingState } from '@grafana/data';
import {
  ConstantVariable,
  CustomVariable,
  DataSourceVariable,
  EmbeddedScene,
  IntervalVariable,
  QueryVariable,
  SceneCanvasText,
  SceneDataTransformer,
  SceneFlexItem,
  SceneFlexLayout,
  SceneQueryRunner,
  SceneTimeRange,
  SceneVariableSet,
  TextBoxVariable,
  sceneGraph,
  sceneUtils,
} from '@grafana/scenes';

/** The width of Grafana's dashboard grid in pixels, for a panel's maxDataPoints. */
const GRID_WIDTH = 1600;

function createSceneVariableFromVariableModel(variable) {
  const common = { name: variable.name, label: variable.label, description: variable.description };
  const shared = {
    skipUrlSync: variable.skipUrlSync,
    hide: variable.hide,
  };
  switch (variable.type) {
    case 'custom':
      return new CustomVariable({
        ...common,
        ...shared,
        value: variable.current?.value ?? '',
        text: variable.current?.text ?? '',
        query: variable.query,
        isMulti: variable.multi,
        allValue: variable.allValue || undefined,
        includeAll: variable.includeAll,
        defaultToAll: Boolean(variable.includeAll),
      });
    case 'query':
      return new QueryVariable({
        ...common,
        ...shared,
        value: variable.current?.value ?? '',
        text: variable.current?.text ?? '',
        query: variable.query,
        datasource: variable.datasource,
        sort: variable.sort,
        refresh: variable.refresh,
        regex: variable.regex,
        allValue: variable.allValue || undefined,
        includeAll: variable.includeAll,
        defaultToAll: Boolean(variable.includeAll),
        isMulti: variable.multi,
        definition: variable.definition,
      });
    case 'datasource':
      return new DataSourceVariable({
        ...common,
        ...shared,
        value: variable.current?.value ?? '',
        text: variable.current?.text ?? '',
        regex: variable.regex,
        pluginId: variable.query,
        allValue: variable.allValue || undefined,
        includeAll: variable.includeAll,
        defaultToAll: Boolean(variable.includeAll),
        isMulti: variable.multi,
      });
    case 'interval': {
      // getIntervalsFromQueryString and getCurrentValueForOldIntervalModel.
      const intervals = String(variable.query ?? '')
        .split(',')
        .map((text) => text.trim())
        .filter(Boolean);
      const current = String(variable.current?.value ?? '').replace(/^\$__auto_interval_/, '');
      return new IntervalVariable({
        ...common,
        ...shared,
        value: intervals.includes(current) ? current : intervals[0],
        intervals,
        autoEnabled: variable.auto,
        autoStepCount: variable.auto_count,
        autoMinInterval: variable.auto_min,
        refresh: variable.refresh,
      });
    }
    case 'constant':
      return new ConstantVariable({ ...common, ...shared, value: variable.query });
    case 'textbox': {
      const current = variable.current?.value;
      const value = !current ? variable.query : Array.isArray(current) ? current[0] : current;
      return new TextBoxVariable({ ...common, ...shared, value });
    }
    default:
      throw new Error(`variable ${variable.name}: type ${variable.type} is not supported`);
  }
}

function* flattenPanels(panels) {
  for (const panel of panels ?? []) {
    yield panel;
    yield* flattenPanels(panel.panels);
  }
}

/** DashboardScene.enrichDataRequest: requests name their dashboard and panel (the server's X- headers). */
class HarnessDashboardScene extends EmbeddedScene {
  enrichDataRequest(source) {
    let object = source;
    while (object && object.state.panel === undefined) {
      object = object.parent;
    }
    const panel = object?.state.panel;
    return {
      app: 'dashboard',
      dashboardUID: this.state.uid,
      panelId: panel?.id,
      panelName: panel?.title,
      panelPluginId: panel?.type,
    };
  }
}

/** A dashboard scene with one data provider per panel that has queries. */
export function buildScene(dashboard, { from, to, url }) {
  const variables = (dashboard.templating?.list ?? []).map(createSceneVariableFromVariableModel);
  const panels = [];
  for (const panel of flattenPanels(dashboard.panels)) {
    if (!panel.targets?.length) {
      continue;
    }
    const runner = new SceneQueryRunner({
      datasource: panel.datasource ?? undefined,
      queries: panel.targets,
      maxDataPoints: panel.maxDataPoints ?? undefined,
      maxDataPointsFromWidth: true,
      minInterval: panel.interval ?? undefined,
    });
    const transformer = new SceneDataTransformer({ $data: runner, transformations: panel.transformations ?? [] });
    const item = new SceneFlexItem({ panel, $data: transformer, body: new SceneCanvasText({ text: panel.title }) });
    panels.push({ panel, runner, transformer, item, width: ((panel.gridPos?.w ?? 24) / 24) * GRID_WIDTH });
  }
  const scene = new HarnessDashboardScene({
    uid: dashboard.uid,
    $timeRange: new SceneTimeRange({ from, to, timeZone: dashboard.timezone || 'browser' }),
    $variables: new SceneVariableSet({ variables }),
    body: new SceneFlexLayout({ children: panels.map((p) => p.item) }),
  });
  if (url) {
    sceneUtils.syncStateFromSearchParams(scene, new URLSearchParams(url));
  }
  return { scene, panels, variables };
}

const SETTLED = new Set([LoadingState.Done, LoadingState.Error]);

/** Activate the scene as rendering it would, and wait until every panel has its data. */
export async function runScene({ scene, panels }, { timeoutMs = 20000 } = {}) {
  globalThis.window.__grafanaSceneContext = scene;
  scene.activate();
  // Rendering activates every object from the root down; variables only notify active ones.
  scene.state.body.activate();
  for (const { item, runner, width } of panels) {
    runner.setContainerWidth(Math.round(width));
    item.activate();
  }
  const deadline = Date.now() + timeoutMs;
  const variableSet = scene.state.$variables;
  const settled = () =>
    // Variables no query waits for (a title's, an override's) must have their values too.
    variableSet.state.variables.every((v) => !variableSet.isVariableLoadingOrWaitingToUpdate(v)) &&
    panels.every(
      ({ runner, transformer }) =>
        SETTLED.has(runner.state.data?.state) &&
        transformer.state.data !== undefined &&
        SETTLED.has(transformer.state.data.state)
    );
  while (!settled()) {
    if (Date.now() > deadline) {
      const waiting = panels
        .filter(({ runner, transformer }) => !SETTLED.has(runner.state.data?.state) || !SETTLED.has(transformer.state.data?.state))
        .map(({ panel, runner, transformer }) => `${panel.title} (${runner.state.data?.state}/${transformer.state.data?.state})`);
      const variables = sceneGraph
        .getVariables(scene)
        .state.variables.map((v) => `${v.state.name}=${JSON.stringify(v.state.value)}${v.state.loading ? ' loading' : ''}${v.state.error ? ` error ${v.state.error}` : ''}`);
      throw new Error(`panels still loading after ${timeoutMs} ms: ${waiting.join(', ')}; variables: ${variables.join(', ')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
