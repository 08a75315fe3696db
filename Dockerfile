# CPU image: the webserver and the daemon (and the code server on CPU-only hosts, see
# docker/compose.cpu.yml). GPU training runs in Dockerfile.gpu's image.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home SEMID_DATA_DIR=/opt/dagster/data \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /opt/semid_pipeline
COPY pyproject.toml README.md requirements.lock ./
COPY semid_pipeline ./semid_pipeline
COPY configs ./configs
# every version from the lock (requirements.lock, refreshed by scripts/lock.sh), torch's CPU build first
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -c requirements.lock torch \
    && pip install -c requirements.lock ".[deploy]"
RUN mkdir -p $DAGSTER_HOME $SEMID_DATA_DIR
COPY docker/dagster.yaml $DAGSTER_HOME/dagster.yaml
COPY docker/workspace.yaml /opt/semid_pipeline/workspace.yaml
EXPOSE 3000 4000
