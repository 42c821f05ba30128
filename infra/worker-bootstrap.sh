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
imds_base=http://169.254.169.254
token=$(retry_curl -X PUT "$imds_base/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() { retry_curl -H "X-aws-ec2-metadata-token: $token" "$imds_base/latest/meta-data/$1"; }
instance_id=$(imds instance-id)

# An object of the artifact bucket, read with the machine's role: a GET
# signed with Signature Version 4 by curl and openssl, which AL2023 and
# Ubuntu both ship (stock Ubuntu images have no aws CLI). The role's
# temporary credentials come from the metadata service and stay in this
# function's variables: never on disk, never printed (no set -x here);
# the keys derived from them are on openssl's command line for a moment,
# at boot, before any job runs.
hmac() { printf '%s' "$2" | openssl dgst -sha256 -mac HMAC -macopt "$1" | sed 's/^.*= //'; }
sha256_hex() { printf '%s' "$1" | openssl dgst -sha256 | sed 's/^.*= //'; }
json_field() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" | head -n 1; }
s3_get() {
    local key=$1 dest=$2 role creds akid skey stoken when day base host canonical scope signing k
    role=$(imds iam/security-credentials/ | head -n 1)
    creds=$(imds "iam/security-credentials/$role")
    akid=$(json_field AccessKeyId <<<"$creds")
    skey=$(json_field SecretAccessKey <<<"$creds")
    stoken=$(json_field Token <<<"$creds")
    [ -n "$akid" ] && [ -n "$skey" ] && [ -n "$stoken" ] || return 1
    when=$(date -u +%Y%m%dT%H%M%SZ)
    day=${when%%T*}
    base=${s3_base#*://}
    host=${base%%/*}
    canonical="GET
${base#"$host"}/$key

host:$host
x-amz-content-sha256:$empty_sha256
x-amz-date:$when
x-amz-security-token:$stoken

host;x-amz-content-sha256;x-amz-date;x-amz-security-token
$empty_sha256"
    scope="$day/$region/s3/aws4_request"
    k=$(hmac "key:AWS4$skey" "$day")
    k=$(hmac "hexkey:$k" "$region")
    k=$(hmac "hexkey:$k" s3)
    k=$(hmac "hexkey:$k" aws4_request)
    signing=$(hmac "hexkey:$k" "AWS4-HMAC-SHA256
$when
$scope
$(sha256_hex "$canonical")")
    curl -fsS --max-time 300 -o "$dest" \
        -H "x-amz-content-sha256: $empty_sha256" \
        -H "x-amz-date: $when" \
        -H "x-amz-security-token: $stoken" \
        -H "Authorization: AWS4-HMAC-SHA256 Credential=$akid/$scope, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=$signing" \
        "$s3_base/$key"
}
s3_base="@S3_BASE@"
region="@REGION@"
empty_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# Installs s3://BUCKET/releases/NAME-SHA256 as /usr/local/bin/NAME, its
# checksum verified; nothing when no checksum is given for this
# architecture (the image carries it). Each try signs afresh (the role's
# credentials may not be there yet in the first seconds of a boot).
install_release() {
    name=$1 sha256=$2
    [ -n "$sha256" ] || return 0
    for try in 1 2 3 4 5; do
        s3_get "releases/$name-$sha256" "/usr/local/bin/$name.download" && break
        [ "$try" -lt 5 ] || { echo "studio-bootstrap: cannot read releases/$name-$sha256 from @BUCKET@" >&2; exit 1; }
        sleep $((try * 3))
    done
    echo "$sha256  /usr/local/bin/$name.download" | sha256sum -c - || { rm -f "/usr/local/bin/$name.download"; exit 1; }
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
