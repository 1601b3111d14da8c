# One image for the API, the migrations and the workers; TORCH_INDEX picks the torch build:
#   CPU (API, migrate, CPU workers):  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   GPU workers (CUDA from PyPI):      --build-arg TORCH_INDEX=https://pypi.org/simple
# The GPU image needs only the host's NVIDIA driver and container toolkit: torch's wheels carry CUDA.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index: the layer is reused while the project's code changes.
RUN pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
        torch==2.14.1 torchvision==0.29.1
# Installed in place (editable) at /app: the code finds alembic.ini and migrations/ beside it.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini gunicorn.conf.py ./
COPY migrations migrations
COPY grocery grocery
COPY service service
COPY api api
COPY worker worker
COPY cli cli
RUN pip install -e .

FROM python:${PYTHON_VERSION}-slim AS runtime
# libgomp: OpenMP for torch and ONNX Runtime on the CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin grocery \
    && mkdir -p /srv/models /srv/uploads \
    && chown grocery:grocery /srv/models /srv/uploads
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GROCERY_MODEL_DIR=/srv/models \
    GROCERY_UPLOAD_DIR=/srv/uploads \
    TORCH_HOME=/srv/models/torch
USER grocery
EXPOSE 8000
CMD ["gunicorn", "api:create_app()", "--bind", "0.0.0.0:8000", "--workers", "4"]
