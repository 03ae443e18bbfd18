# escape=`
FROM busybox:1
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d `
    https://example.com/files/tool.tar.gz /opt/
ADD --chmod=0755 http://example.com/get /usr/bin/get
ADD archive.tar.gz ../../opt/unpacked/
COPY --exclude=*.md --exclude=**/*.log --link docs/ /site/
COPY --parents ./src/./x/*.md a/b/c.txt /dst/
COPY . .
