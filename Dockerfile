# One image for the API and the workers (docker-compose.yml picks the command).
# CUDA torch by default so the same image runs the GPU worker; CPU-only hosts can build
# with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (smaller image).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    IDENTITY_MODELS_DIR=/models \
    IDENTITY_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
RUN pip install --index-url "$TORCH_INDEX_URL" torch torchvision \
    && pip install hatchling
COPY identity ./identity
COPY workers ./workers
COPY migrations ./migrations
COPY models ./models
RUN pip install ".[api,workers,cluster]"

# Never run as root: the API parses untrusted images.
RUN useradd --create-home --uid 1000 identity \
    && mkdir -p /models /data \
    && chown identity:identity /models /data
USER identity

EXPOSE 8000
CMD ["uvicorn", "--factory", "identity.api.app:app_from_env", "--host", "0.0.0.0", "--port", "8000"]
