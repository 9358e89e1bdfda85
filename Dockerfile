# driftseg: `driftseg serve` on the default checkpoint, settings from DRIFTSEG_* environment variables.
# The torch 2.14.1 wheel that pyproject.toml pins carries the CUDA 13 runtime libraries, so this image
# runs on an NVIDIA GPU (host driver and NVIDIA container toolkit) and, without one, on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/driftseg
COPY pyproject.toml README.md ./
COPY driftseg/ driftseg/
COPY models/ models/
COPY adapters/ adapters/
COPY data/ data/
COPY bench/ bench/
COPY training/ training/
COPY service/ service/
# the serving extra alone (no plotting or corruption libraries), and the package without its offline
# parts: `driftseg train` and `driftseg bench` then say that they are not installed
RUN pip install '.[serve]' && rm -rf /root/.cache \
    && python -c "import driftseg, pathlib, shutil; [shutil.rmtree(pathlib.Path(driftseg.__file__).parent / d) for d in ('bench', 'training')]"

# a numeric USER, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd
RUN groupadd --gid 10001 driftseg && useradd --create-home --uid 10001 --gid 10001 driftseg \
    && mkdir -p /var/lib/driftseg/state && chown -R 10001:10001 /var/lib/driftseg
COPY --chown=10001:10001 models/checkpoints/camvid-lraspp.pt /opt/driftseg/checkpoints/camvid-lraspp.pt

ENV DRIFTSEG_CHECKPOINT=/opt/driftseg/checkpoints/camvid-lraspp.pt \
    DRIFTSEG_STATE_DIR=/var/lib/driftseg/state \
    DRIFTSEG_HOST=0.0.0.0 \
    DRIFTSEG_PORT=8000 \
    DRIFTSEG_REQUIRE_STREAM_ID=true
USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/driftseg/state"]

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, os; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DRIFTSEG_PORT', '8000'), timeout=2)"]

# SIGTERM lets uvicorn drain and the lifespan flush every stream's snapshot before exit
STOPSIGNAL SIGTERM
ENTRYPOINT ["driftseg", "serve"]
