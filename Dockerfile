# crmsync-exporter: the exporter (and the simulator, for the demo) in a small non-root image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python -m venv /opt/crmsync \
 && /opt/crmsync/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/crmsync/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/crmsync /opt/crmsync
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin crmsync
ENV PATH=/opt/crmsync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9312
HEALTHCHECK --interval=30s --timeout=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9312/-/healthy', timeout=4)"]
ENTRYPOINT ["crmsync-exporter"]
CMD ["--config.file=/etc/crmsync/crmsync-exporter.yml"]
