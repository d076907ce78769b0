# syntax=docker/dockerfile:1
# seqcast images, built from the repository root (docker-compose.yml builds both targets).
#
#   runtime (the default, last stage): `seqcast serve` with the runtime dependencies only
#            (kafka-python, redis, onnxruntime, numpy, prometheus-client, tqdm); no TensorFlow.
#            The same image runs `seqcast replay`, `tail`, `inspect` and `models`.
#   trainer: the package plus the `train` extra (TensorFlow CPU, Keras, tf2onnx), for a one-shot
#            `seqcast train ... --models-dir /models` into a shared volume.
#
# Dependencies are installed from pyproject.toml before the source is copied, so editing code
# rebuilds only the last small layer.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 seqcast \
 && useradd --system --uid 10001 --gid seqcast --home-dir /app --no-create-home --shell /usr/sbin/nologin seqcast \
 && mkdir -p /app /models \
 && chown seqcast:seqcast /app /models
WORKDIR /app

# The project source, in one place for both package stages.
FROM scratch AS src
COPY pyproject.toml seqcast_cli.py README.m[d] /src/
COPY streamer /src/streamer
COPY training /src/training

# Runtime dependencies: [project].dependencies of pyproject.toml, nothing else.
FROM base AS deps
COPY pyproject.toml /tmp/pyproject.toml
RUN python -m venv "$VIRTUAL_ENV" \
 && python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# ... plus the `train` extra, for the trainer only.
FROM deps AS train-deps
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; print('\n'.join(p['optional-dependencies']['train']))" > /tmp/requirements-train.txt \
 && pip install -r /tmp/requirements-train.txt

FROM deps AS package
COPY --from=src /src /tmp/src
RUN pip install --no-deps /tmp/src

FROM train-deps AS train-package
COPY --from=src /src /tmp/src
RUN pip install --no-deps /tmp/src

FROM base AS trainer
COPY --from=train-package /opt/venv /opt/venv
USER seqcast
ENV TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["seqcast"]
CMD ["train", "--help"]

FROM base AS runtime
COPY --from=package /opt/venv /opt/venv
USER seqcast
# /metrics and /healthz (Settings.metrics_port; SEQCAST_METRICS_PORT overrides it).
EXPOSE 9108
# /healthz answers 200 only when the broker, Redis and the model are usable. Shell form, so a
# changed SEQCAST_METRICS_PORT is honoured; urlopen raises (exit 1) on 503 or no answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${SEQCAST_METRICS_PORT:-9108}/healthz', timeout=2)" || exit 1
# Exec form: seqcast is PID 1 and receives SIGTERM itself (finish the batch, commit, exit 0).
ENTRYPOINT ["seqcast"]
CMD ["serve"]
