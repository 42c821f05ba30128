#!/bin/bash
# Studio worker bootstrap: EC2 user-data rendered per pool by the fleet
# (placeholders @NAME@). It holds no credentials: the machine acts through
# its instance profile, and the worker's settings below are only names.
set -euo pipefail

# Early in boot the metadata service and the network may not answer yet:
# every call is retried (curl: 8 tries, 2 s apart, connection refusals too).
# A bootstrap that still fails exits non-zero (cloud-init reports it).
retry_curl() { curl -fsS --retry 8 --retry-delay 2 --retry-connrefused --max-time 10 "$@"; }

# The instance id, from IMDSv2 (token first).
token=$(retry_curl -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
instance_id=$(retry_curl -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)

# The studio binary for this machine's architecture: from the artifact
# bucket, checksum verified, unless the image already carries it (no
# checksum given for this architecture).
case "$(uname -m)" in
    x86_64) want_sha256="@STUDIO_SHA256_X86_64@" ;;
    aarch64) want_sha256="@STUDIO_SHA256_ARM64@" ;;
    *) want_sha256="" ;;
esac
if [ -n "$want_sha256" ]; then
    for try in 1 2 3 4 5; do
        aws s3 cp --only-show-errors "s3://@BUCKET@/releases/studio-$want_sha256" /usr/local/bin/studio.download && break
        [ "$try" -lt 5 ] || exit 1
        sleep $((try * 3))
    done
    echo "$want_sha256  /usr/local/bin/studio.download" | sha256sum -c -
    install -m 0755 /usr/local/bin/studio.download /usr/local/bin/studio
    rm -f /usr/local/bin/studio.download
fi
test -x /usr/local/bin/studio

# Scripts run as an unprivileged user that cannot reach the instance
# metadata service (so never the machine's role credentials); the worker
# itself runs as root and keeps both.
id -u studio-job >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin studio-job
iptables -C OUTPUT -d 169.254.169.254 -m owner --uid-owner studio-job -j REJECT 2>/dev/null \
    || iptables -A OUTPUT -d 169.254.169.254 -m owner --uid-owner studio-job -j REJECT
if command -v ip6tables >/dev/null; then
    ip6tables -C OUTPUT -d fd00:ec2::254 -m owner --uid-owner studio-job -j REJECT 2>/dev/null \
        || ip6tables -A OUTPUT -d fd00:ec2::254 -m owner --uid-owner studio-job -j REJECT
fi

install -d -m 0755 /etc/studio
echo "STUDIO_INSTANCE_ID=$instance_id" > /etc/studio/instance.env
cat > /etc/studio/worker.env <<'ENV'
@WORKER_ENV@
ENV

cat > /etc/systemd/system/studio-worker.service <<'UNIT'
[Unit]
Description=Studio worker for pool @POOL@
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/studio/worker.env
EnvironmentFile=/etc/studio/instance.env
ExecStart=/usr/local/bin/studio worker --pool @POOL@ --instance-id ${STUDIO_INSTANCE_ID} --venv-root /var/lib/studio/venvs --run-as studio-job
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now studio-worker.service
