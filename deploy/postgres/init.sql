-- Roles of the docker-compose demo store, run once when the database is created.
-- The simulator writes as the owner (POSTGRES_USER, "crmsync"); the exporter and Grafana
-- read through roles that can do nothing but SELECT, in read-only sessions.
CREATE ROLE crmsync_exporter LOGIN PASSWORD 'exporter-demo';
CREATE ROLE crmsync_grafana LOGIN PASSWORD 'grafana-demo';

ALTER ROLE crmsync_exporter SET default_transaction_read_only = on;
ALTER ROLE crmsync_grafana SET default_transaction_read_only = on;
-- A runaway dashboard query must not hold the store's connections.
ALTER ROLE crmsync_grafana SET statement_timeout = '30s';
-- The store keeps UTC: so does every Grafana session (its tables show times as stored).
ALTER ROLE crmsync_grafana SET timezone = 'UTC';

GRANT CONNECT ON DATABASE sync TO crmsync_exporter, crmsync_grafana;
GRANT USAGE ON SCHEMA public TO crmsync_exporter, crmsync_grafana;
-- The tables are created later by the simulator (--create-schema) as the owner.
ALTER DEFAULT PRIVILEGES FOR ROLE crmsync IN SCHEMA public
  GRANT SELECT ON TABLES TO crmsync_exporter, crmsync_grafana;
