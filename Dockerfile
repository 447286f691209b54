# teosd, The Eye of Satoshi watchtower.
#
#   docker build -t teos .
#   docker run -v teos-data:/data -p 9814:9814 --stop-timeout 30 --ulimit nofile=65536:65536 \
#       -v "$PWD/btcrpcpassword:/run/secrets/btcrpcpassword:ro" \
#       -e TEOS_BTCNETWORK=mainnet -e TEOS_BTCRPCPASSWORDFILE=/run/secrets/btcrpcpassword teos \
#       --btcrpcconnect <bitcoind host> --btcrpcuser <user> --zmqhashblock tcp://<bitcoind host>:28332
#
# The bitcoind password goes in a file (a Docker secret works), never on the command line, where `ps` and
# `docker inspect` show it; the file must be readable by uid 10001. --ulimit lets teosd hold its
# apimaxconnections (16384 by default) open connections. Behind a reverse proxy set TEOS_BEHINDPROXY=1
# and publish the port on the proxy's side only: the per-address limits then belong to the proxy.
#
# Settings come as flags after the image name, as TEOS_<OPTION> environment variables, or from
# /data/teos.conf (see teos.conf.example). Give the network as TEOS_BTCNETWORK (or in teos.conf), not as a
# flag, so that the HEALTHCHECK's teos-cli looks for the admin cookie in the same place as teosd (and the
# admin port, if you change it, as TEOS_RPCPORT).
# The datadir /data holds the database, the tower key and the admin cookie: back up /data/<network>/.
# /data belongs to the user teos (uid 10001) with mode 0700; a host directory mounted there instead of a
# volume must be given to uid 10001 (chown 10001:10001 <dir>; chmod 700 <dir>).
#
# BASE: any Debian-based image with python3 (>= 3.11) and its venv module. The default is the official
# Python image; tests/packaging builds on a local Debian root made by scripts/container-setup instead
# (--build-arg BASE=localhost/teos-base:bookworm), where no registry can be reached.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/teos/venv \
    PATH=/opt/teos/venv/bin:$PATH \
    TEOS_DATADIR=/data \
    TEOS_BTCNETWORK=mainnet \
    TEOS_APIBIND=0.0.0.0

# Layers from the least to the most often changed: the user, the venv and the datadir; the dependencies
# (rebuilt only when requirements.txt changes); then teos itself, installed from the copied sources
# without network access (its build backend is installed with the dependencies).
RUN groupadd --gid 10001 teos \
    && useradd --uid 10001 --gid teos --home-dir /data --no-create-home --shell /usr/sbin/nologin teos \
    && install -d -o teos -g teos -m 0700 /data \
    && python3 -m venv /opt/teos/venv
COPY requirements.txt /opt/teos/src/
# pip trusts the system's CA store (ca-certificates, in both kinds of base) rather than its own copy, so a
# build behind a TLS-inspecting proxy needs only its CA there (tests/packaging mounts the host's bundle).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN pip install -r /opt/teos/src/requirements.txt "setuptools>=68" wheel
COPY pyproject.toml setup.py requirements-test.txt /opt/teos/src/
COPY common /opt/teos/src/common
COPY teos /opt/teos/src/teos
RUN pip install --no-deps --no-build-isolation /opt/teos/src \
    && rm -rf /opt/teos/src

USER teos
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9814

# Healthy while teosd answers its admin API (inside the container, with the cookie in /data).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["teos-cli", "--timeout", "5", "gettowerinfo"]

# exec form: teosd is PID 1 and receives SIGTERM from `docker stop` (it stops cleanly and exits 0; give it
# up to 30 s, --stop-timeout, rather than Docker's default 10 s: its API workers alone may take 10 s).
ENTRYPOINT ["teosd"]
