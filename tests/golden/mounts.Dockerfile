FROM busybox:1 AS deps
RUN mkdir -p /deps && echo dep > /deps/a

FROM busybox:1
WORKDIR /work
RUN --mount=type=cache,target=/root/.cache,sharing=locked \
    --mount=type=bind,from=deps,source=/deps,target=deps \
    --mount=type=secret,id=token,env=TOKEN \
    --mount=type=secret,id=npmrc,target=/root/.npmrc,mode=0440,uid=1000 \
    --mount=type=tmpfs,target=/scratch,size=64m \
    --mount=type=ssh \
    --network=none \
    ls deps /root/.cache
RUN --mount=type=bind,target=/ctx,rw cat /ctx/file.txt
RUN ["echo", "exec", "form"]
