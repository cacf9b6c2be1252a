# Prometheus from Debian's package (2.42 in bookworm), for scripts/compose-test: no registry is
# reachable there, so prom/prometheus cannot be pulled. BASE_IMAGE is the locally built Debian.
# Laid out as prom/prometheus is (entrypoint, /etc/prometheus, working directory /prometheus where
# the TSDB goes, non-root), so the compose service's command works unchanged.
#   docker build --network host -f deploy/ci/prometheus.Dockerfile --build-arg BASE_IMAGE=... deploy/ci
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
