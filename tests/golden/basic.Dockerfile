# a plain single-stage build
FROM busybox:1
LABEL org.example.kind=basic
ENV APP_HOME=/srv/app \
    GREETING="hello world"
WORKDIR $APP_HOME
COPY --chown=app:app --chmod=0640 config.txt ./conf/
COPY src/ ../lib/
RUN echo "$GREETING" > greeting.txt && ls -la
USER app
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=1m30s --retries=2 CMD ["wget", "-q", "http://localhost:8080/"]
ENTRYPOINT ["/srv/app/run"]
CMD ["--serve"]
