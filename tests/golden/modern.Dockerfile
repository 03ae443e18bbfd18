# escape=\
# What dockerfile 1.19 reads differently from 20.10 (converted for linux/amd64 on linux/arm64).
ARG TARGETPLATFORM
ARG BUILDOS
FROM --platform=linux busybox:1 AS tools
ARG TARGETPLATFORM
ARG A
ARG B
RUN echo "$TARGETPLATFORM $BUILDOS" > /platform.txt
ENV WINPATH=C:\\dir\\
ENV NEXT=kept
RUN ["echo", "exec"] && echo shell
COPY --chown=${A}:${B} a.txt /into/.
ONBUILD RUN <<EOF
echo trigger
EOF
HEALTHCHECK CMD	["probe", "-q"]
EXPOSE 8080:80 127.0.0.1:53:53/udp

FROM tools
RUN <<  EOF
echo spaced heredoc
EOF
COPY --from=tools /platform.txt /
