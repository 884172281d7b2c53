# relay: one image for the web and the worker processes (`relay web` / `relay worker`).
# Build: docker build -t relay .   Locked dependencies: requirements.lock (uv pip compile --generate-hashes).

# --- build: wheels for the locked dependencies and the project itself --------------------------------
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip wheel --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock -w /wheels \
 && pip wheel --no-cache-dir --no-deps . -w /wheels

# --- run: no compilers, no pip cache, no root ----------------------------------------------------------
FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    RELAY_METRICS_PORT=9100 \
    PROMETHEUS_MULTIPROC_DIR=/var/run/relay/metrics
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels relay \
 && rm -rf /wheels \
 && mkdir -p /var/run/relay/metrics \
 && chown -R 10001:10001 /var/run/relay
USER 10001:10001
# 8000: webhooks, /status, /metrics of the web side; 9100: /metrics of a worker pod.
EXPOSE 8000 9100
ENTRYPOINT ["relay"]
CMD ["web"]
