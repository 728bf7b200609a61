# One image for the API and the workers (docker-compose.yml picks the command).
# Installs from the lock, so the image runs exactly the versions the suite passed with.
# VARIANT=cuda (default) carries faiss-gpu, which also runs on a host without a GPU, so
# the same image serves the GPU worker; VARIANT=cpu carries faiss-cpu.
FROM python:3.11-slim

ARG VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    IDENTITY_MODELS_DIR=/models \
    IDENTITY_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Locked dependencies first (a cached layer), then the code without resolving again.
COPY requirements ./requirements
RUN pip install -r "requirements/${VARIANT}.txt"
COPY pyproject.toml README.md ./
COPY identity ./identity
COPY workers ./workers
COPY migrations ./migrations
COPY models ./models
RUN pip install --no-deps ".[api,workers,cluster]"

# Never run as root: the API parses untrusted images.
RUN useradd --create-home --uid 1000 identity \
    && mkdir -p /models /data \
    && chown identity:identity /models /data
USER identity

EXPOSE 8000
CMD ["uvicorn", "--factory", "identity.api.app:app_from_env", "--host", "0.0.0.0", "--port", "8000"]
