#!/bin/bash
# Studio worker bootstrap: EC2 user-data rendered per pool by the fleet
# (placeholders @NAME@). It holds no credentials: the machine acts through its
# instance profile. It expects the image to carry /usr/local/bin/studio.
set -euo pipefail

# The instance id, from IMDSv2 (token first).
token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
instance_id=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)

install -d -m 0755 /etc/studio
echo "STUDIO_INSTANCE_ID=$instance_id" > /etc/studio/instance.env
cat > /etc/studio/worker.env <<'ENV'
STUDIO_BACKEND=aws
AWS_REGION=@REGION@
STUDIO_POOL=@POOL@
STUDIO_JOBS_TABLE=@JOBS_TABLE@
STUDIO_POOLS_TABLE=@POOLS_TABLE@
STUDIO_ARTIFACT_BUCKET=@BUCKET@
ENV

cat > /etc/systemd/system/studio-worker.service <<'UNIT'
[Unit]
Description=Studio worker for pool @POOL@
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/studio/worker.env
EnvironmentFile=/etc/studio/instance.env
ExecStart=/usr/local/bin/studio worker --pool @POOL@ --instance-id ${STUDIO_INSTANCE_ID}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now studio-worker.service
