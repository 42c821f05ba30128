//! The startup script of a GCE worker (instance metadata `startup-script`,
//! run as root at every boot). It carries names only: the deployment's
//! table and queue names and the AWS role the worker's Google identity is
//! exchanged for; no key of any kind.

use crate::config::GcpConfig;
use studio_core::ids::PoolKey;

/// What keeps jobs from the metadata server, run at every boot (the script
/// installs it as a unit of its own, ordered before the worker).
pub use studio_core::worker::users::METADATA_BLOCK;

/// Quotes `v` for a POSIX shell.
fn sh(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The script for a worker of group `key`.
pub fn script(cfg: &GcpConfig, key: &PoolKey) -> String {
    // A systemd EnvironmentFile: KEY=VALUE lines, values without newlines.
    let mut env = String::new();
    for (k, v) in &cfg.worker_env {
        if matches!(k.as_str(), "STUDIO_BACKEND" | "STUDIO_METADATA") {
            continue;
        }
        env.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
    }
    let release = |b: &Option<(String, String)>| b.clone().unwrap_or_default();
    let (url, sha) = release(&cfg.worker_binary);
    let (uv_url, uv_sha) = release(&cfg.uv_binary);
    format!(
        r#"#!/bin/bash
# Studio worker bootstrap (GCE startup-script, run at every boot). Names
# only; credentials come from the machine's own identity: Google's from the
# metadata server, AWS's from STS AssumeRoleWithWebIdentity with the
# machine's identity token (the worker does the exchange itself).
set -Eeuo pipefail
# A failure is said in one line starting with "studio-bootstrap: " (the
# guest agent passes this script's output to serial port 1): the control
# plane reads it when it retires the VM for running no worker. The command
# is named as written, never expanded.
say() {{ echo "studio-bootstrap: $*" >&2; }}
# shellcheck disable=SC2154  # rc is the trap's own
trap 'rc=$?; say "line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)"' ERR
MD=http://metadata.google.internal/computeMetadata/v1
md() {{ curl -sf -H 'Metadata-Flavor: Google' "$MD/$1"; }}
# Installs gs://BUCKET/OBJECT (URL) as BIN unless BIN already has SHA;
# nothing without a URL (the image carries it).
install_release() {{
    local bin=$1 url=$2 sha=$3 obj b o token
    [ -n "$url" ] || return 0
    echo "$sha  $bin" | sha256sum -c --status 2>/dev/null && return 0
    obj="${{url#gs://}}"
    b="${{obj%%/*}}"
    o="${{obj#*/}}"
    for try in 1 2 3 4 5; do
        token=$(md instance/service-accounts/default/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/' || true)
        # The token on stdin, not on curl's command line (any local user
        # reads /proc/*/cmdline).
        curl -sf -H @- -o "$bin.download" \
            "https://storage.googleapis.com/storage/v1/b/$b/o/${{o//\//%2F}}?alt=media" \
            <<<"Authorization: Bearer $token" && break
        [ "$try" -lt 5 ] || {{ say "cannot read $url with this VM's service account"; exit 1; }}
        sleep $((try * 3))
    done
    echo "$sha  $bin.download" | sha256sum -c - >/dev/null || {{
        rm -f "$bin.download"
        say "$url is not its checksum: not installed"
        exit 1
    }}
    install -m 0755 "$bin.download" "$bin"
    rm -f "$bin.download"
}}
BIN=/usr/local/bin/studio
install_release "$BIN" {url} {sha}
# uv beside it: it builds jobs' Python environments.
install_release /usr/local/bin/uv {uv_url} {uv_sha}
test -x "$BIN"

# Every attempt runs as a uid of its own from {job_uids}, which cannot reach
# the metadata server (so never the machine's tokens); the worker itself
# runs as root. The block is a unit of its own, run at every boot before
# the worker (this script runs at every boot too, but races the worker).
command -v iptables >/dev/null || {{ apt-get update -q && apt-get install -y -q iptables; }}
install -d -m 0755 /usr/local/lib/studio
cat > /usr/local/lib/studio/metadata-block <<'BLOCK'
{block}
BLOCK
chmod 0755 /usr/local/lib/studio/metadata-block
cat > /etc/systemd/system/studio-metadata-block.service <<'UNIT'
{block_unit}
UNIT

install -d -m 0755 /etc/studio
# The VM's own name and zone (a pool's group spreads over the region's
# zones; the worker's calls about its own VM go to its zone).
{{
    echo "STUDIO_INSTANCE_ID=$(md instance/name)"
    echo "STUDIO_GCP_ZONE=$(md instance/zone | sed 's#.*/##')"
}} > /etc/studio/instance.env
cat > /etc/studio/worker.env <<'ENV'
STUDIO_BACKEND=gce
STUDIO_METADATA=gce
STUDIO_GCP_PROJECT={project}
STUDIO_GCP_BUCKET={bucket}
STUDIO_GCP_SERVICE_ACCOUNT={account}
STUDIO_GCP_IMAGE={image}
{env}ENV

cat > /etc/systemd/system/studio-worker.service <<'UNIT'
[Unit]
Description=Studio worker for pool {pool}
After=network-online.target studio-metadata-block.service
Wants=network-online.target
Requires=studio-metadata-block.service

[Service]
EnvironmentFile=/etc/studio/worker.env
EnvironmentFile=/etc/studio/instance.env
ExecStart=/usr/local/bin/studio worker --pool {pool} --instance-id ${{STUDIO_INSTANCE_ID}} --env-root /var/lib/studio/envs --job-uids {job_uids}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now studio-metadata-block.service
systemctl enable --now studio-worker.service
"#,
        pool = key,
        job_uids = studio_core::worker::users::MACHINE_JOB_UIDS,
        block = METADATA_BLOCK.trim_end(),
        block_unit = studio_core::worker::users::metadata_block_unit(),
        project = cfg.project,
        bucket = cfg.bucket,
        account = cfg.service_account,
        image = cfg.image,
        url = sh(&url),
        sha = sh(&sha),
        uv_url = sh(&uv_url),
        uv_sha = sh(&uv_sha),
    )
}

/// What a silent VM's startup script wrote as it failed
/// ([`studio_core::pool::BOOTSTRAP_SAYS`]), from its serial port 1 (where
/// GCE's guest agent passes a startup script's output); `None` when it said
/// nothing or the port cannot be read (that never stops the retirement).
pub(crate) async fn said(
    instances: &google_cloud_compute_v1::client::Instances,
    project: &str,
    zone: &str,
    name: &str,
) -> Option<String> {
    let out = instances
        .get_serial_port_output()
        .set_project(project)
        .set_zone(zone)
        .set_instance(name)
        .set_port(1)
        .send()
        .await;
    match out {
        Ok(o) => o
            .contents
            .as_deref()
            .and_then(studio_core::pool::LaunchTrouble::bootstrap_said),
        Err(e) => {
            tracing::warn!(instance = name, error = %e, "serial port unreadable");
            None
        }
    }
}
