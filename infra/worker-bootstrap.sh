#!/bin/bash
# Studio worker bootstrap: EC2 user-data rendered per pool by the fleet,
# which fills in its placeholders (upper-case names between two at signs).
# It holds no credentials: the machine acts through its instance profile,
# and the worker's settings below are only names.
set -Eeuo pipefail

# A failure is said on the console, one line starting with
# "studio-bootstrap: " (cloud-init passes this script's output there): the
# control plane reads it when it retires the machine for running no worker,
# and records it on the pool, where `studio status` shows it. The command
# is named as written, never expanded (no credential in it).
say() {
    echo "studio-bootstrap: $*" >&2
    if [ -w /dev/console ]; then echo "studio-bootstrap: $*" >/dev/console 2>/dev/null || true; fi
}
# shellcheck disable=SC2154  # rc is the trap's own
trap 'rc=$?; say "line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)"' ERR

# Early in boot the metadata service and the network may not answer yet:
# every call is retried (curl: 8 tries, 2 s apart, connection refusals too).
# A bootstrap that still fails exits non-zero (cloud-init reports it).
retry_curl() { curl -fsS --retry 8 --retry-delay 2 --retry-connrefused --max-time 10 "$@"; }

# The instance id, from IMDSv2 (token first).
imds_base=http://169.254.169.254
token=$(retry_curl -X PUT "$imds_base/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() { retry_curl -H "X-aws-ec2-metadata-token: $token" "$imds_base/latest/meta-data/$1"; }
instance_id=$(imds instance-id)

# An object of the artifact bucket, read with the machine's role: a GET
# signed with Signature Version 4 by python3's standard library (stock
# Ubuntu images have no aws CLI; AL2023 and Ubuntu both have python3, which
# cloud-init itself runs on). That process reads the role's temporary
# credentials from the metadata service itself, with a token of its own,
# and they never leave it: not on a command line, not on disk, not printed.
s3_get() {
    python3 - "$imds_base" "$s3_base" "$region" "$1" "$2" <<'PY'
import datetime, hashlib, hmac, json, sys, urllib.request

imds, base, region, key, dest = sys.argv[1:6]


def fetch(req, timeout=10):
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def meta(path, token):
    h = {"X-aws-ec2-metadata-token": token}
    return fetch(urllib.request.Request(f"{imds}/latest/meta-data/{path}", headers=h)).decode()


try:
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    token = fetch(urllib.request.Request(f"{imds}/latest/api/token", method="PUT", headers=ttl)).decode()
    role = meta("iam/security-credentials/", token).split()[0]
    creds = json.loads(meta(f"iam/security-credentials/{role}", token))
    now = datetime.datetime.now(datetime.timezone.utc)
    when, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host, _, prefix = base.split("://", 1)[1].partition("/")
    path = (f"/{prefix}" if prefix else "") + f"/{key}"
    empty = hashlib.sha256(b"").hexdigest()
    headers = {
        "host": host,
        "x-amz-content-sha256": empty,
        "x-amz-date": when,
        "x-amz-security-token": creds["Token"],
    }
    signed = ";".join(sorted(headers))
    lines = [f"{k}:{headers[k]}" for k in sorted(headers)]
    canonical = "\n".join(["GET", path, "", *lines, "", signed, empty])
    scope = f"{day}/{region}/s3/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = "\n".join(["AWS4-HMAC-SHA256", when, scope, digest])
    k = ("AWS4" + creds["SecretAccessKey"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    del headers["host"]  # urllib sends it, as signed
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
        f"SignedHeaders={signed}, Signature={sig}"
    )
    with urllib.request.urlopen(urllib.request.Request(f"{base}/{key}", headers=headers), timeout=300) as r:
        with open(dest, "wb") as out:
            while chunk := r.read(1 << 20):
                out.write(chunk)
except Exception as e:  # one line, never the credentials
    print(f"GET {key}: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
PY
}
s3_base="@S3_BASE@"
region="@REGION@"

# Installs s3://BUCKET/releases/NAME-SHA256 as /usr/local/bin/NAME, its
# checksum verified; nothing when no checksum is given for this
# architecture (the image carries it). The role's credentials may not be
# there in the first seconds of a boot, and a new role's policy takes a
# while (IAM is eventually consistent): tries for five minutes, backing off
# to 30 s, each signed afresh.
install_release() {
    name=$1 sha256=$2
    [ -n "$sha256" ] || return 0
    deadline=$((SECONDS + 300)) delay=3
    until s3_get "releases/$name-$sha256" "/usr/local/bin/$name.download"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "cannot read releases/$name-$sha256 from the bucket @BUCKET@ with this machine's role"
            exit 1
        fi
        sleep "$delay"
        delay=$((delay * 2 > 30 ? 30 : delay * 2))
    done
    echo "$sha256  /usr/local/bin/$name.download" | sha256sum -c - >/dev/null || {
        rm -f "/usr/local/bin/$name.download"
        say "releases/$name-$sha256 in the bucket is not its checksum: not installed"
        exit 1
    }
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
