ARG BASE=busybox
ARG VERSION=1
FROM ${BASE}:${VERSION} AS builder
ARG VERSION
RUN echo "building $VERSION" > /out.txt

FROM busybox:1 AS never-used
RUN exit 1

FROM builder AS tested
RUN test -s /out.txt

FROM scratch
COPY --from=builder /out.txt /
COPY --from=0 /etc/passwd /etc/
COPY --from=alpine:3 /etc/os-release /etc/
