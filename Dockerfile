# crmsync-exporter in a small non-root image. The default target is the runtime alone: the
# exporter package and its dependencies. The `tools` target adds crmsync_tools (the simulator,
# the schema and demo commands, the dashboards and alerts generators); docker-compose's demo
# runs its simulator from it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Only exporter/ is in the build, so only it is installed; the console scripts of the tools,
# whose modules are not there, are taken out of the project first.
RUN sed -i '/= "crmsync_tools\./d' pyproject.toml \
 && python -m venv /opt/crmsync \
 && /opt/crmsync/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/crmsync/bin/pip install --no-cache-dir .

FROM build AS build-tools
COPY pyproject.toml ./
COPY crmsync_tools ./crmsync_tools
RUN /opt/crmsync/bin/pip install --no-cache-dir .

FROM python:3.11-slim AS base
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin crmsync
ENV PATH=/opt/crmsync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 9312
HEALTHCHECK --interval=30s --timeout=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9312/-/healthy', timeout=4)"]
ENTRYPOINT ["crmsync-exporter"]
CMD ["--config.file=/etc/crmsync/crmsync-exporter.yml"]

FROM base AS tools
COPY --from=build-tools /opt/crmsync /opt/crmsync
USER 10001:10001

FROM base AS runtime
COPY --from=build /opt/crmsync /opt/crmsync
USER 10001:10001
