# teosd, The Eye of Satoshi watchtower.
#
#   docker build -t teos .
#   docker run -v teos-data:/data -p 9814:9814 teos --btcnetwork mainnet \
#       --btcrpcconnect <bitcoind host> --btcrpcuser <user> --btcrpcpassword <password>
#
# Settings come as flags after the image name, as TEOS_<OPTION> environment variables (-e TEOS_BTCNETWORK=...),
# or from /data/teos.conf (see teos.conf.example). The datadir /data holds the database and the tower key.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TEOS_DATADIR=/data \
    TEOS_APIBIND=0.0.0.0

WORKDIR /opt/teos
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY setup.py ./
COPY common ./common
COPY teos ./teos
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin teos \
    && mkdir -p /data && chown teos:teos /data

USER teos
VOLUME ["/data"]
EXPOSE 9814

# exec form: teosd is PID 1 and receives SIGTERM from `docker stop` (it stops cleanly and exits 0).
ENTRYPOINT ["teosd"]
