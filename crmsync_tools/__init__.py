"""Tools around the exporter: the dashboards and alerts generators, the simulator, the demo."""
