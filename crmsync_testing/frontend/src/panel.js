// A panel's data as a person sees it: field config, overrides and value mappings applied by
// @grafana/data, each cell formatted by its display processor, and Inspect > Data > Download
// CSV written by @grafana/data's toCSV.
import {
  PanelPlugin,
  getPanelOptionsWithDefaults,
  FieldType,
  ThresholdsMode,
  dataFrameToJSON,
  standardFieldConfigEditorRegistry,
  applyFieldOverrides,
  cacheFieldDisplayNames,
  createTheme,
  dataLinksOverrideProcessor,
  displayNameOverrideProcessor,
  formattedValueToString,
  getFieldDisplayName,
  identityOverrideProcessor,
  numberOverrideProcessor,
  stringOverrideProcessor,
  thresholdsOverrideProcessor,
  toCSV,
  valueMappingsOverrideProcessor,
} from '@grafana/data';
import { defaultTableFieldOptions } from '@grafana/schema';

export const theme = createTheme();

/**
 * The standard field options of public/app/core/components/OptionsUI/registry.tsx: the part
 * that processes values, not the editors. Grafana registers them at boot.
 */
const STANDARD_FIELD_OPTIONS = [
  { id: 'unit', path: 'unit', process: stringOverrideProcessor, settings: { placeholder: 'none' } },
  { id: 'min', path: 'min', process: numberOverrideProcessor, settings: {}, shouldApply: isNumber },
  { id: 'max', path: 'max', process: numberOverrideProcessor, settings: {}, shouldApply: isNumber },
  {
    id: 'decimals',
    path: 'decimals',
    process: numberOverrideProcessor,
    settings: { min: 0, max: 15, integer: true },
    shouldApply: isNumber,
  },
  {
    id: 'displayName',
    path: 'displayName',
    process: displayNameOverrideProcessor,
    settings: { placeholder: 'none', expandTemplateVars: true },
  },
  { id: 'color', path: 'color', process: identityOverrideProcessor, settings: { byValueSupport: true, preferThresholdsMode: true } },
  { id: 'noValue', path: 'noValue', process: stringOverrideProcessor, settings: { placeholder: '-' } },
  { id: 'links', path: 'links', process: dataLinksOverrideProcessor, settings: { placeholder: '-' } },
  {
    id: 'mappings',
    path: 'mappings',
    process: valueMappingsOverrideProcessor,
    settings: {},
    defaultValue: [],
    shouldApply: (field) => field.type !== FieldType.time,
  },
  {
    id: 'thresholds',
    path: 'thresholds',
    process: thresholdsOverrideProcessor,
    settings: {},
    defaultValue: {
      mode: ThresholdsMode.Absolute,
      steps: [
        { value: -Infinity, color: 'green' },
        { value: 80, color: 'red' },
      ],
    },
  },
].map(registryItem);

function isNumber(field) {
  return field.type === FieldType.number;
}

function registryItem(item) {
  return { name: item.id, editor: () => null, override: () => null, shouldApply: () => true, ...item };
}

standardFieldConfigEditorRegistry.setInit(() => STANDARD_FIELD_OPTIONS);

/**
 * The panel's plugin as far as field config goes: the standard options and the plugin's own
 * (`custom.*`). The table panel's own options default as public/app/plugins/panel/table/module.tsx
 * sets them (@grafana/schema's defaultTableFieldOptions; @grafana/ui's Table needs them); any
 * other custom option the panel sets is taken as given.
 */
export function panelPlugin(panel) {
  const defaults = panel.type === 'table' ? { ...defaultTableFieldOptions, filterable: false } : {};
  const custom = new Set([...Object.keys(defaults), ...Object.keys(panel.fieldConfig?.defaults?.custom ?? {})]);
  for (const override of panel.fieldConfig?.overrides ?? []) {
    for (const property of override.properties ?? []) {
      if (property.id.startsWith('custom.')) {
        custom.add(property.id.slice('custom.'.length));
      }
    }
  }
  const plugin = new PanelPlugin(() => null).useFieldConfig({
    useCustomConfig: (builder) => {
      for (const path of custom) {
        builder.addCustomEditor({
          id: path,
          path,
          name: path,
          editor: () => null,
          override: () => null,
          process: identityOverrideProcessor,
          shouldApply: () => true,
          defaultValue: defaults[path],
        });
      }
    },
  });
  plugin.meta = { id: panel.type, name: panel.type };
  return plugin;
}

/** The panel's options and field config with its plugin's defaults, as VizPanel keeps them. */
export function withDefaults(panel) {
  const plugin = panelPlugin(panel);
  const { options, fieldConfig } = getPanelOptionsWithDefaults({
    plugin,
    currentOptions: panel.options ?? {},
    currentFieldConfig: panel.fieldConfig ?? { defaults: {}, overrides: [] },
    isAfterPluginChange: false,
  });
  return { plugin, options, fieldConfig };
}

/**
 * What VizPanel does with the transformed frames: the panel's field config with the plugin's
 * defaults (getPanelOptionsWithDefaults), applied by applyFieldOverrides.
 */
export function applyFieldConfig(series, panel, { replaceVariables, timeZone }) {
  const { plugin, fieldConfig } = withDefaults(panel);
  return applyFieldOverrides({
    data: series,
    fieldConfig,
    fieldConfigRegistry: plugin.fieldConfigRegistry,
    replaceVariables,
    theme,
    timeZone,
  });
}

function plain(value) {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    return String(value);
  }
  if (value === undefined) {
    return null;
  }
  return value;
}

/** The columns a table panel shows: display name, labels, raw values, formatted texts, links. */
export function tableView(frames) {
  return frames.map((frame) => ({
    refId: frame.refId,
    length: frame.length,
    fields: frame.fields
      .filter((field) => !field.config.custom?.hidden)
      .map((field) => ({
        name: getFieldDisplayName(field, frame, frames),
        type: field.type,
        labels: field.labels ?? {},
        values: Array.from(field.values, plain),
        texts: Array.from(field.values, (value) => formattedValueToString(field.display(value))),
        colors: Array.from(field.values, (value) => field.display(value).color ?? null),
        links: field.config.links?.length
          ? Array.from(field.values, (_value, valueRowIndex) =>
              (field.getLinks?.({ valueRowIndex }) ?? []).map((link) => ({ title: link.title, href: link.href }))
            )
          : undefined,
      })),
  }));
}

/** public/app/features/inspector/InspectDataTab.tsx: table options cleared from the field config. */
function cleanTableConfigFromFieldConfig(fieldConfig) {
  const cleaned = structuredClone(fieldConfig);
  cleaned.defaults.custom = {};
  for (const override of cleaned.overrides) {
    for (const property of override.properties) {
      if (property.id.startsWith('custom.')) {
        // Grafana calls slice (not splice) here, so override properties stay: kept as it is.
        override.properties.slice(override.properties.indexOf(property), 1);
      }
    }
  }
  return cleaned;
}

/**
 * Inspect > Data > Download CSV with the inspector's defaults (the query's frames, not the
 * transformed ones; "Formatted data" on), the first frame, as downloadDataFrameAsCsv writes it.
 */
export function inspectCsv(querySeries, panel, { replaceVariables, timeZone }) {
  const fieldConfig = cleanTableConfigFromFieldConfig(panel.fieldConfig ?? { defaults: {}, overrides: [] });
  // No registry given: applyFieldOverrides then uses the standard one, as the inspector does.
  const frames = applyFieldOverrides({
    data: querySeries,
    fieldConfig,
    replaceVariables,
    theme,
    timeZone,
  });
  cacheFieldDisplayNames(frames);
  return frames.length ? toCSV([frames[0]], {}) : null;
}

/**
 * A frame as DataFrameJSON, NaN and infinities kept as entities the way Grafana's server
 * writes them (dataFrameToJSON alone would turn them into null).
 */
export function frameToJSON(frame) {
  const json = dataFrameToJSON(frame);
  const entities = json.data.values.map((values, index) => {
    const found = {};
    json.data.values[index] = values.map((value, row) => {
      if (typeof value !== 'number' || Number.isFinite(value)) {
        return value;
      }
      const kind = Number.isNaN(value) ? 'NaN' : value > 0 ? 'Inf' : 'NegInf';
      (found[kind] ??= []).push(row);
      return null;
    });
    return Object.keys(found).length ? found : null;
  });
  if (entities.some(Boolean)) {
    json.data.entities = entities;
  }
  return json;
}
