#!/bin/bash
# Studio worker bootstrap: EC2 user-data rendered per pool by the fleet,
# which fills in its placeholders (upper-case names between two at signs).
# It holds no credentials: the machine acts through its instance profile,
# and the worker's settings below are only names.
set -euo pipefail

# Early in boot the metadata service and the network may not answer yet:
# every call is retried (curl: 8 tries, 2 s apart, connection refusals too).
# A bootstrap that still fails exits non-zero (cloud-init reports it).
retry_curl() { curl -fsS --retry 8 --retry-delay 2 --retry-connrefused --max-time 10 "$@"; }

# The instance id, from IMDSv2 (token first).
token=$(retry_curl -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
instance_id=$(retry_curl -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)

# Installs s3://BUCKET/releases/NAME-SHA256 as /usr/local/bin/NAME, its
# checksum verified; nothing when no checksum is given for this
# architecture (the image carries it).
install_release() {
    name=$1 sha256=$2
    [ -n "$sha256" ] || return 0
    for try in 1 2 3 4 5; do
        aws s3 cp --only-show-errors "s3://@BUCKET@/releases/$name-$sha256" "/usr/local/bin/$name.download" && break
        [ "$try" -lt 5 ] || exit 1
        sleep $((try * 3))
    done
    echo "$sha256  /usr/local/bin/$name.download" | sha256sum -c -
    install -m 0755 "/usr/local/bin/$name.download" "/usr/local/bin/$name"
    rm -f "/usr/local/bin/$name.download"
}

# The studio binary for this machine's architecture, and uv beside it (it
# builds jobs' Python environments, fetching a Python when a job asks for
# one the image lacks: no image needs python3-venv or a recent Python).
case "$(uname -m)" in
    x86_64) studio_sha256="@STUDIO_SHA256_X86_64@" uv_sha256="@UV_SHA256_X86_64@" ;;
    aarch64) studio_sha256="@STUDIO_SHA256_ARM64@" uv_sha256="@UV_SHA256_ARM64@" ;;
    *) studio_sha256="" uv_sha256="" ;;
esac
install_release studio "$studio_sha256"
install_release uv "$uv_sha256"
test -x /usr/local/bin/studio

# Every attempt runs as a uid of its own from @JOB_UIDS@, which cannot
# reach the instance metadata service (so never the machine's role
# credentials); the worker itself runs as root and keeps both. The block
# is a unit of its own, run at every boot before the worker (firewall
# rules do not survive a reboot).
install -d -m 0755 /usr/local/lib/studio
cat > /usr/local/lib/studio/metadata-block <<'BLOCK'
@METADATA_BLOCK@
BLOCK
chmod 0755 /usr/local/lib/studio/metadata-block
cat > /etc/systemd/system/studio-metadata-block.service <<'UNIT'
@METADATA_BLOCK_UNIT@
UNIT

install -d -m 0755 /etc/studio
echo "STUDIO_INSTANCE_ID=$instance_id" > /etc/studio/instance.env
cat > /etc/studio/worker.env <<'ENV'
@WORKER_ENV@
ENV

cat > /etc/systemd/system/studio-worker.service <<'UNIT'
[Unit]
Description=Studio worker for pool @POOL@
After=network-online.target studio-metadata-block.service
Wants=network-online.target
Requires=studio-metadata-block.service

[Service]
EnvironmentFile=/etc/studio/worker.env
EnvironmentFile=/etc/studio/instance.env
ExecStart=/usr/local/bin/studio worker --pool @POOL@ --instance-id ${STUDIO_INSTANCE_ID} --env-root /var/lib/studio/envs --job-uids @JOB_UIDS@
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now studio-metadata-block.service
systemctl enable --now studio-worker.service
