// The Grafana server as the frontend sees it: @grafana/runtime's BackendSrv.
//
// Panel queries (POST /api/ds/query) are what Grafana's server would run against the
// datasources. Here they are recorded, and answered with the data frames the test computed by
// running them for real (tests/dashboards/grafana_server.py). Prometheus resource calls (label
// values for query variables) go to a real Prometheus when one is given, else to a table.
import { from, lastValueFrom, of, throwError } from 'rxjs';

const RESOURCE = /^\/api\/datasources\/(?:proxy\/)?uid\/([^/]+)(?:\/resources)?(\/api\/v1\/.*)$/;

export class GrafanaServer {
  constructor() {
    this.configure({});
  }

  /** answers: {"<dashboard uid>/<panel id>/<refId>": {query, frames, error}}; labels: {name: [values]}. */
  configure({ answers = {}, prometheus = null, labels = {} }) {
    this.answers = answers;
    this.prometheus = prometheus;
    this.labels = labels;
    this.requests = [];
  }

  fetch(options) {
    const url = options.url.replace(/^https?:\/\/[^/]+/, '');
    if (url.startsWith('/api/ds/query')) {
      return of(this.dsQuery(options));
    }
    const resource = RESOURCE.exec(url.split('?')[0]);
    if (resource) {
      return from(this.prometheusResource(resource[2], url, options));
    }
    return throwError(() => ({ status: 404, data: { message: `no such endpoint: ${url}` } }));
  }

  async get(url, params) {
    const query = params ? `?${new URLSearchParams(params)}` : '';
    return (await lastValueFrom(this.fetch({ url: url + query, method: 'GET' }))).data;
  }

  async post(url, data) {
    return (await lastValueFrom(this.fetch({ url, method: 'POST', data }))).data;
  }

  async request(options) {
    return (await lastValueFrom(this.fetch(options))).data;
  }

  async datasourceRequest(options) {
    return lastValueFrom(this.fetch(options));
  }

  dsQuery(options) {
    const headers = options.headers ?? {};
    const dashboard = headers['X-Dashboard-Uid'];
    const panel = headers['X-Panel-Id'];
    const body = options.data;
    this.requests.push({ dashboard, panel, body });
    const results = {};
    for (const query of body.queries) {
      const key = `${dashboard}/${panel}/${query.refId}`;
      const answer = this.answers[key];
      if (!answer) {
        results[query.refId] = { status: 200, frames: [] };
        continue;
      }
      const text = query.expr ?? query.rawSql;
      if (answer.query !== text) {
        results[query.refId] = {
          status: 400,
          error: `the answer for ${key} was computed for another query:\n${answer.query}\n!=\n${text}`,
        };
        continue;
      }
      results[query.refId] = answer.error
        ? { status: answer.status ?? 400, error: answer.error }
        : { status: 200, frames: answer.frames };
    }
    return { data: { results }, status: 200, ok: true, statusText: 'OK', url: options.url };
  }

  async prometheusResource(path, url, options) {
    const query = url.includes('?') ? url.slice(url.indexOf('?') + 1) : '';
    const params = new URLSearchParams(query);
    for (const [key, value] of Object.entries(options.params ?? {})) {
      for (const item of Array.isArray(value) ? value : [value]) {
        params.append(key, item);
      }
    }
    if (options.data && typeof options.data === 'object') {
      for (const [key, value] of Object.entries(options.data)) {
        params.append(key, value);
      }
    }
    let data;
    if (this.prometheus) {
      const response = await fetch(`${this.prometheus}${path}?${params}`);
      data = await response.json();
      if (!response.ok) {
        throw { status: response.status, data };
      }
    } else {
      data = this.labelResource(path);
    }
    return { data, status: 200, ok: true, statusText: 'OK', url };
  }

  /** The label values API answered from the test's table, for tests without a Prometheus. */
  labelResource(path) {
    const values = /^\/api\/v1\/label\/([^/]+)\/values$/.exec(path);
    if (values) {
      return { status: 'success', data: this.labels[decodeURIComponent(values[1])] ?? [] };
    }
    if (path === '/api/v1/labels') {
      return { status: 'success', data: Object.keys(this.labels) };
    }
    return { status: 'success', data: [] };
  }
}
