//! The startup script of a GCE worker (instance metadata `startup-script`,
//! run as root at every boot). It carries names only: the deployment's
//! table and queue names and the AWS role the worker's Google identity is
//! exchanged for; no key of any kind.

use crate::GcpConfig;
use studio_core::ids::PoolKey;

/// Quotes `v` for a POSIX shell.
fn sh(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The script for a worker of group `key`.
pub fn script(cfg: &GcpConfig, key: &PoolKey) -> String {
    let mut env = String::new();
    for (k, v) in &cfg.worker_env {
        env.push_str(&format!("export {k}={}\n", sh(v)));
    }
    let (url, sha) = cfg
        .worker_binary
        .clone()
        .unwrap_or_else(|| (String::new(), String::new()));
    format!(
        r#"#!/bin/bash
# Studio worker bootstrap (GCE). Names only; credentials come from the
# machine's own identity: Google's from the metadata server, AWS's from
# STS AssumeRoleWithWebIdentity with the machine's identity token.
set -euo pipefail
export STUDIO_CLOUD=gce
export STUDIO_POOL={pool}
export STUDIO_GCP_PROJECT={project}
export STUDIO_GCP_ZONE={zone}
export STUDIO_GCP_BUCKET={bucket}
{env}MD=http://metadata.google.internal/computeMetadata/v1
token() {{ curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/service-accounts/default/token" | sed -E 's/.*"access_token":"([^"]+)".*/\1/'; }}
BIN=/usr/local/bin/studio
URL={url}
if [ -n "$URL" ] && ! echo {sha}"  $BIN" | sha256sum -c --status 2>/dev/null; then
  OBJ="${{URL#gs://}}"; B="${{OBJ%%/*}}"; O="${{OBJ#*/}}"
  for i in 1 2 3 4 5; do
    curl -sf -H "Authorization: Bearer $(token)" -o "$BIN.tmp" \
      "https://storage.googleapis.com/storage/v1/b/$B/o/$(printf %s "$O" | sed 's|/|%2F|g')?alt=media" && break
    sleep $((i * 5))
  done
  echo {sha}"  $BIN.tmp" | sha256sum -c --status
  chmod 0755 "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
fi
export STUDIO_INSTANCE="$(curl -sf -H 'Metadata-Flavor: Google' "$MD/instance/name")"
# The worker keeps the identity token file fresh itself (tokens last an hour).
exec "$BIN" worker --gce
"#,
        pool = sh(key.as_str()),
        project = sh(&cfg.project),
        zone = sh(&cfg.zone),
        bucket = sh(&cfg.bucket),
        url = sh(&url),
        sha = sh(&sha),
    )
}
