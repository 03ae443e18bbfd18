FROM busybox:1
ARG NAME=world
RUN <<EOF
echo "hello $NAME" > /hello.txt
EOF
RUN cat <<'EOT' > /literal.txt && cat <<EOT2 > /two.txt
$NAME stays
EOT
$NAME expands
EOT2
RUN <<EOF
#!/bin/sh
echo shebang
EOF
COPY <<EOF /etc/app.conf
name=$NAME "quoted" 'single'
EOF
COPY --chmod=755 <<'SCRIPT' /usr/local/bin/
#!/bin/sh
echo $NAME
SCRIPT
RUN <<-EOF
	echo tabs are chomped
	EOF
