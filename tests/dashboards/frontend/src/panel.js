// A panel's data as a person sees it: field config, overrides and value mappings applied by
// @grafana/data, each cell formatted by its display processor, and Inspect > Data > Download
// CSV written by @grafana/data's toCSV.
import {
  FieldConfigOptionsRegistry,
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
  unitOverrideProcessor,
  valueMappingsOverrideProcessor,
} from '@grafana/data';

export const theme = createTheme();

/**
 * The standard field options of public/app/core/components/OptionsUI/registry.tsx: the part
 * that processes values, not the editors. Grafana registers them at boot.
 */
const STANDARD_FIELD_OPTIONS = [
    { id: 'unit', path: 'unit', process: unitOverrideProcessor, settings: {} },
    { id: 'min', path: 'min', process: numberOverrideProcessor, settings: {} },
    { id: 'max', path: 'max', process: numberOverrideProcessor, settings: {} },
    { id: 'decimals', path: 'decimals', process: numberOverrideProcessor, settings: { min: 0, max: 15, integer: true } },
    { id: 'displayName', path: 'displayName', process: displayNameOverrideProcessor, settings: {} },
    { id: 'color', path: 'color', process: identityOverrideProcessor, settings: {} },
    { id: 'thresholds', path: 'thresholds', process: thresholdsOverrideProcessor, settings: {} },
    { id: 'mappings', path: 'mappings', process: valueMappingsOverrideProcessor, settings: {} },
    { id: 'noValue', path: 'noValue', process: stringOverrideProcessor, settings: {} },
    { id: 'links', path: 'links', process: dataLinksOverrideProcessor, settings: {} },
    { id: 'filterable', path: 'filterable', process: identityOverrideProcessor, settings: {}, hideFromDefaults: true },
].map(registryItem);

function registryItem(item) {
  return { name: item.id, editor: () => null, override: () => null, shouldApply: () => true, ...item };
}

standardFieldConfigEditorRegistry.setInit(() => STANDARD_FIELD_OPTIONS);

/**
 * A panel plugin's registry: the standard options and the plugin's own (`custom.*`). Each
 * custom option the panel sets is taken as given, as the table panel's options are.
 */
export function fieldConfigRegistry(fieldConfig) {
  const custom = new Set(Object.keys(fieldConfig?.defaults?.custom ?? {}));
  for (const override of fieldConfig?.overrides ?? []) {
    for (const property of override.properties ?? []) {
      if (property.id.startsWith('custom.')) {
        custom.add(property.id.slice('custom.'.length));
      }
    }
  }
  const items = [...custom].map((path) =>
    registryItem({ id: `custom.${path}`, path, isCustom: true, process: identityOverrideProcessor, settings: {} })
  );
  return new FieldConfigOptionsRegistry(() => [...STANDARD_FIELD_OPTIONS, ...items]);
}

/** What VizPanel.applyFieldConfig does with the transformed frames. */
export function applyFieldConfig(series, panel, { replaceVariables, timeZone }) {
  return applyFieldOverrides({
    data: series,
    fieldConfig: panel.fieldConfig ?? { defaults: {}, overrides: [] },
    fieldConfigRegistry: fieldConfigRegistry(panel.fieldConfig),
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

/** The columns a table panel shows: display name, raw values, formatted texts, links. */
export function tableView(frames) {
  return frames.map((frame) => ({
    refId: frame.refId,
    length: frame.length,
    fields: frame.fields
      .filter((field) => !field.config.custom?.hidden)
      .map((field) => ({
        name: getFieldDisplayName(field, frame, frames),
        type: field.type,
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
