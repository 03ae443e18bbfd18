FROM 127.0.0.1:5000/conformance/busybox:1
COPY . /ctx/
RUN ls -A /ctx > /listing.txt
