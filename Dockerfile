# syntax=docker/dockerfile:1
# secureig's image: the package built from this checkout into a virtualenv, run as a non-root
# user, configured by SECUREIG_* variables, the SQLite store (if used) on a volume.
#   docker build -t secureig .
#   docker run -p 8085:8085 -e SECUREIG_OLLAMA_URL=http://ollama:11434 \
#     -v "$PWD/admin_key:/run/secrets/admin_key:ro" \
#     -e SECUREIG_ADMIN_KEY_FILE=/run/secrets/admin_key -v secureig:/var/lib/secureig secureig

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The same steps tests/test_deploy.py runs in a fresh virtualenv.
RUN python -m venv /opt/secureig \
    && /opt/secureig/bin/pip install --no-cache-dir ".[otel]" \
    && /opt/secureig/bin/secureig --help > /dev/null

FROM python:3.12-slim
RUN groupadd --system --gid 10001 secureig \
    && useradd --system --uid 10001 --gid secureig --home-dir /var/lib/secureig --create-home \
       --shell /usr/sbin/nologin secureig
COPY --from=build /opt/secureig /opt/secureig
ENV PATH=/opt/secureig/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SECUREIG_HOST=0.0.0.0 \
    SECUREIG_PORT=8085 \
    SECUREIG_DATABASE_URL=sqlite:////var/lib/secureig/secureig.db \
    SECUREIG_USAGE_SPOOL=/var/lib/secureig/usage.spool
USER 10001:10001
WORKDIR /var/lib/secureig
VOLUME ["/var/lib/secureig"]
EXPOSE 8085
# /healthz answers while the process serves (over plain HTTP: with --ssl-certfile, probe HTTPS).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8085/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["secureig"]
CMD ["serve"]
