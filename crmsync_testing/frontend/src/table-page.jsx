// A page that renders table panels with @grafana/ui's Table, as Grafana's table panel does.
//
// window.renderPanels([{id, panel, title, dataFrames, interpolations, width, height}]) draws
// each panel (title and table, in Grafana's dark theme) from the frames the harness produced:
// the frames after the panel's transformations, given the panel's field config here as
// Grafana's panel does.
import { createRoot } from 'react-dom/client';

import { dataFrameFromJSON } from '@grafana/data';
import { GlobalStyles, Table } from '@grafana/ui';

import { applyFieldConfig, theme, withDefaults } from './panel.js';

// Grafana's table columns are at least this wide: the picture grows to show every column.
const COLUMN_WIDTH = 160;

function Panel({ panel, title, frame, width, height }) {
  width = Math.max(width, (frame?.fields.length ?? 0) * COLUMN_WIDTH);
  const style = {
    width,
    background: theme.colors.background.primary,
    border: `1px solid ${theme.colors.border.weak}`,
    borderRadius: theme.shape.radius.default,
    padding: theme.spacing(1),
  };
  return (
    <section style={style}>
      <h2 style={{ ...theme.typography.h6, margin: theme.spacing(0, 0, 1, 0) }}>{title}</h2>
      {frame?.length ? table(panel, frame, width, height) : <NoData height={height} />}
    </section>
  );
}

/** What Grafana's panels show for a query without rows. */
function NoData({ height }) {
  const style = { height, display: 'flex', alignItems: 'center', justifyContent: 'center' };
  return (
    <div style={style} data-no-data="true">
      No data
    </div>
  );
}

/** The Table with the props Grafana's table panel gives it (plugins/panel/table/TablePanel.tsx). */
function table(panel, frame, width, height) {
  const options = panel.options ?? {};
  return (
    <Table
      data={frame}
      width={width - 2 * theme.spacing.gridSize}
      height={height}
      noHeader={!(options.showHeader ?? true)}
      resizable={true}
      initialSortBy={options.sortBy}
      footerOptions={options.footer}
      enablePagination={options.footer?.enablePagination}
      cellHeight={options.cellHeight}
      fieldConfig={withDefaults(panel).fieldConfig}
    />
  );
}

window.renderPanels = (pictures) => {
  const page = document.getElementById('root');
  page.style.background = theme.colors.background.canvas;
  page.style.padding = theme.spacing(2);
  page.style.display = 'inline-block';
  const styles = document.createElement('div');
  page.appendChild(styles);
  createRoot(styles).render(<GlobalStyles />);
  for (const picture of pictures) {
    const element = document.createElement('div');
    element.id = picture.id;
    element.style.display = 'inline-block';
    element.style.margin = theme.spacing(1);
    page.appendChild(element);
    const frames = picture.dataFrames.map(dataFrameFromJSON);
    // The texts as the harness's scenes interpolated them (display names with variables).
    const replaceVariables = (text) => picture.interpolations?.[text] ?? text;
    const [frame] = applyFieldConfig(frames, picture.panel, { replaceVariables, timeZone: 'utc' });
    createRoot(element).render(
      <Panel
        panel={picture.panel}
        title={picture.title ?? picture.panel.title}
        frame={frame}
        width={picture.width}
        height={picture.height}
      />
    );
  }
};
