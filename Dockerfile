# stream_app image: one image, the role is chosen by the command
# (`stream-app trainer ...`, `stream-app scorer ...`, `stream-app topics create ...`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, in its own layer: the default wheel pulls ~3 GB of CUDA
# libraries, and this layer stays cached while the app code changes. For a GPU
# image build with --build-arg TORCH_INDEX_URL=https://pypi.org/simple (PyPI's torch
# is the CUDA build constraints.txt pins; PyTorch's cu124 index stops at torch 2.6).
# The torch version is constraints.txt's (that of the last green run), as below for
# everything else: unpinned, each build took whatever was newest that day. Only torch
# comes from that index (--no-deps): its own requirements come from PyPI at
# constraints.txt's versions with the app below, whether or not the index has them.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-deps --index-url "${TORCH_INDEX_URL}" "$(grep '^torch==' /tmp/constraints.txt)"

# A plain install: the wheel carries schemas/ as package data (stream_app/schemas).
WORKDIR /app
COPY . /app
# /var/lib/stream-app: the trainer's snapshot volume (a named volume takes the
# owner of the image's folder, so the unprivileged user can write it).
RUN pip install -c /app/constraints.txt /app \
    && useradd --system --uid 10001 --home-dir /app --no-create-home stream-app \
    && install -d -o stream-app -g stream-app /var/lib/stream-app

USER stream-app
# Metrics/health ports: trainer 9464, scorer 9465 (see deploy/prometheus/prometheus.yml).
EXPOSE 9464 9465
CMD ["stream-app", "--help"]
