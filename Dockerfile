# The worker as a container, in the shape of the FunLess worker's own image
# (funlessdev/funless, worker/Dockerfile): the release run by bin/run as a
# user without privileges, the node named from NODE_IP, the cookie from
# RELEASE_COOKIE, metrics on 4021. On Debian rather than Alpine: the NIF
# and the compiler child link against glibc.
#
#   docker build -t fl-worker .
#   docker run -e RELEASE_COOKIE=... -e NODE_IP=... fl-worker
#
# deploy/docker-compose.yml and deploy/kubernetes/worker.yml run it beside a
# FunLess Core. RELEASE_COOKIE has no default: set it to the Core's.

ARG DEBIAN=bookworm

FROM rust:1.95-${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends elixir erlang-dev \
 && rm -rf /var/lib/apt/lists/*
ENV MIX_ENV=prod LANG=C.UTF-8
WORKDIR /src
COPY Cargo.toml Cargo.lock mix.exs ./
COPY native native
COPY mix mix
COPY config config
COPY lib lib
COPY rel rel
RUN mix release --path /release

FROM debian:${DEBIAN}-slim
# what the Erlang runtime, the NIF and bin/run need: ncurses, OpenSSL,
# zlib, the C++ runtime (the JIT), CA certificates (outbound https from
# functions), and ip (the node's address, in env.sh)
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtinfo6 libssl3 zlib1g libstdc++6 ca-certificates iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 funless \
 && useradd --uid 1000 --gid funless --create-home --home-dir /home/funless funless \
 && mkdir -p /var/lib/fl-worker \
 && chown funless:funless /var/lib/fl-worker

USER funless
WORKDIR /home/funless/app
COPY --from=build --chown=funless:funless /release ./

ENV LANG=C.UTF-8 \
    FL_DATA_DIR=/var/lib/fl-worker \
    FL_METRICS_PORT=4021
VOLUME /var/lib/fl-worker

# metrics and health (HTTP), epmd, libcluster gossip
EXPOSE 4021 4369 45892/udp

CMD ["bin/run"]
