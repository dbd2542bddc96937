// What Grafana's app wires up at boot, for a dashboard to run outside Grafana.
//
// Grafana's frontend reaches its services through setters in @grafana/runtime (template
// service, datasource service, backend service, runRequest). Grafana's own implementations
// live in its app, not in the published packages, so the small parts the dashboards need are
// written here, each after the Grafana file named in its comment. The server behind the
// backend service is the test's: see GrafanaServer.
import { from, of } from 'rxjs';
import { catchError, map } from 'rxjs/operators';

import { LoadingState, standardTransformers, standardTransformersRegistry } from '@grafana/data';
import { PrometheusDatasource } from '@grafana/prometheus';
import {
  DataSourceWithBackend,
  setBackendSrv,
  setDataSourceSrv,
  setRunRequest,
  setTemplateSrv,
  toDataQueryError,
} from '@grafana/runtime';
import { sceneGraph } from '@grafana/scenes';

import { GrafanaServer } from './server.js';

/** public/app/features/templating/template_srv.ts: in a scenes dashboard, replace() is sceneGraph.interpolate. */
class SceneTemplateSrv {
  getVariables() {
    const scene = globalThis.window.__grafanaSceneContext;
    return scene ? sceneGraph.getVariables(scene).state.variables.map((v) => ({ ...v.state })) : [];
  }

  replace(target, scopedVars, format, interpolations) {
    const scope = scopedVars?.__sceneObject?.value ?? globalThis.window.__grafanaSceneContext;
    return sceneGraph.interpolate(scope, target, scopedVars, format, interpolations);
  }

  containsTemplate(target) {
    return typeof target === 'string' && /\$\{?\w|\[\[\w/.test(target);
  }

  updateTimeRange() {}
}

/**
 * The SQL datasources' frontend (public/app/features/plugins/sql/datasource/SqlDatasource.ts):
 * the query goes to the server with its variables replaced, values quoted as SQL literals.
 */
class SqlDatasource extends DataSourceWithBackend {
  constructor(settings, templateSrv) {
    super(settings);
    this.templateSrv = templateSrv;
  }

  interpolateVariable = (value, variable) => {
    const quote = (text) => `'${String(text).replace(/'/g, "''")}'`;
    if (typeof value === 'string') {
      return variable.multi || variable.includeAll ? quote(value) : value.replace(/'/g, "''");
    }
    if (typeof value === 'number') {
      return value;
    }
    if (Array.isArray(value)) {
      return value.map(quote).join(',');
    }
    return value;
  };

  filterQuery(query) {
    return !query.hide;
  }

  applyTemplateVariables(target, scopedVars) {
    return {
      refId: target.refId,
      datasource: this.getRef(),
      rawSql: this.templateSrv.replace(target.rawSql, scopedVars, this.interpolateVariable),
      format: target.format,
    };
  }
}

/** public/app/features/plugins/datasource_srv.ts, for the datasources the test provisions. */
class ProvisionedDataSourceSrv {
  constructor(datasources, templateSrv) {
    this.templateSrv = templateSrv;
    this.settings = datasources.map((ds, index) => ({
      id: index + 1,
      uid: ds.uid,
      name: ds.name,
      type: ds.type,
      isDefault: Boolean(ds.isDefault),
      access: 'proxy',
      url: `/api/datasources/proxy/uid/${ds.uid}`,
      jsonData: ds.jsonData ?? {},
      readOnly: true,
      meta: { id: ds.type, name: ds.type, type: 'datasource', metrics: true, backend: true, info: {} },
      rawRef: { uid: ds.uid, type: ds.type },
    }));
    this.instances = new Map();
  }

  getInstanceSettings(ref, scopedVars) {
    let key = typeof ref === 'string' ? ref : ref?.uid;
    if (key == null || key === 'default') {
      return this.settings.find((s) => s.isDefault);
    }
    if (key.startsWith('$')) {
      key = this.templateSrv.replace(key, scopedVars);
    }
    return this.settings.find((s) => s.uid === key || s.name === key);
  }

  async get(ref, scopedVars) {
    const settings = this.getInstanceSettings(ref, scopedVars);
    if (!settings) {
      throw new Error(`Datasource ${JSON.stringify(ref)} was not found`);
    }
    if (!this.instances.has(settings.uid)) {
      const instance =
        settings.type === 'prometheus'
          ? new PrometheusDatasource(settings, this.templateSrv)
          : new SqlDatasource(settings, this.templateSrv);
      this.instances.set(settings.uid, instance);
    }
    return this.instances.get(settings.uid);
  }

  getList(filters = {}) {
    return this.settings.filter((s) => !filters.pluginId || s.type === filters.pluginId);
  }

  reload() {}
}

/** public/app/features/query/state/runRequest.ts: a datasource's answer as the panel's data. */
function runRequest(datasource, request, queryFunction) {
  const panelData = (fields) => ({ series: [], request, timeRange: request.range, ...fields });
  if (!request.targets.length) {
    return of(panelData({ state: LoadingState.Done }));
  }
  // Query variables pass their datasource's variable support as the query function.
  return from(queryFunction ? queryFunction(request) : datasource.query(request)).pipe(
    map((packet) => {
      const errors = packet.errors ?? (packet.error ? [packet.error] : undefined);
      return panelData({
        state: packet.state ?? (errors?.length ? LoadingState.Error : LoadingState.Done),
        series: packet.data ?? [],
        errors,
      });
    }),
    catchError((error) => of(panelData({ state: LoadingState.Error, errors: [toDataQueryError(error)] })))
  );
}

/**
 * public/app/features/transformers/standardTransformers.ts registers @grafana/data's
 * transformers; the registry items carry only what running them needs.
 */
function initTransformers() {
  // Some transformers are listed twice, under an old name too.
  const transformers = new Map(Object.values(standardTransformers).map((t) => [t.id, t]));
  standardTransformersRegistry.setInit(() =>
    [...transformers.values()].map((transformer) => ({
      id: transformer.id,
      name: transformer.name,
      description: transformer.description,
      // Grafana 13 registers a loader, `transformation()`; earlier ones the transformer itself.
      transformation: Object.defineProperties(() => transformer, Object.getOwnPropertyDescriptors(transformer)),
      editor: () => null,
    }))
  );
}

let server;
let dataSourceSrv;

/** Forget the datasource instances (and what their caches learnt) between runs. */
export function resetDatasources() {
  dataSourceSrv.instances.clear();
}

/** Wire the services once per process; returns the server, to be given each request's answers. */
export function startGrafana({ datasources }) {
  if (server) {
    return server;
  }
  const templateSrv = new SceneTemplateSrv();
  setTemplateSrv(templateSrv);
  dataSourceSrv = new ProvisionedDataSourceSrv(datasources, templateSrv);
  setDataSourceSrv(dataSourceSrv);
  server = new GrafanaServer();
  setBackendSrv(server);
  setRunRequest(runRequest);
  initTransformers();
  return server;
}
