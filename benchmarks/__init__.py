"""A reproducible benchmark of crmsync-exporter against the SQL floor and query-exporter."""
