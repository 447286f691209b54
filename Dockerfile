# teosd, The Eye of Satoshi watchtower.
#
#   docker build -t teos .
#   docker run -v teos-data:/data -p 9814:9814 -e TEOS_BTCNETWORK=mainnet teos \
#       --btcrpcconnect <bitcoind host> --btcrpcuser <user> --btcrpcpassword <password> \
#       --zmqhashblock tcp://<bitcoind host>:28332
#
# Settings come as flags after the image name, as TEOS_<OPTION> environment variables, or from
# /data/teos.conf (see teos.conf.example). Give the network as TEOS_BTCNETWORK (or in teos.conf), not as a
# flag, so that the HEALTHCHECK's teos-cli looks for the admin cookie in the same place as teosd.
# The datadir /data holds the database, the tower key and the admin cookie: back up /data/<network>/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TEOS_DATADIR=/data \
    TEOS_BTCNETWORK=mainnet \
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

# Healthy while teosd answers its admin API (inside the container, with the cookie in /data).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["teos-cli", "--timeout", "5", "gettowerinfo"]

# exec form: teosd is PID 1 and receives SIGTERM from `docker stop` (it stops cleanly and exits 0).
ENTRYPOINT ["teosd"]
