ARG TARGETPLATFORM
FROM --platform=$BUILDPLATFORM scratch AS base
ARG TARGETARCH
ARG TARGETPLATFORM
COPY bin-${TARGETARCH} /bin/app
MAINTAINER someone@example.com
ONBUILD RUN echo child
SHELL ["/bin/bash", "-eu", "-c"]
CMD app --flag
