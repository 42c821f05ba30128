//! [`ArtifactStore`] on Cloud Storage, for GCE pools: their workspaces,
//! logs and checkpoints stay in the cloud whose machines read and write
//! them, so a multi-GB checkpoint never pays cross-cloud egress.
//!
//! Only the data-plane client (`Storage`: read and write over JSON/REST) is
//! used; the crate lists objects only through `StorageControl` (gRPC),
//! which the emulators do not speak, and Studio needs no listing:
//! - workspaces at `workspaces/<sha256>.tar.gz`, written only if absent
//!   (`ifGenerationMatch=0`), verified on read;
//! - log chunks at `logs/<job>/<n>` (n = 0, 1, 2, … zero-padded): each
//!   append takes the next free number with an `ifGenerationMatch=0` write,
//!   which GCS decides atomically, so chunks from any number of writers
//!   (one attempt after another, on different machines) form one total
//!   order; a reader walks them from 0 until the first missing one;
//! - checkpoints at `checkpoints/<job>/<attempt>.tar.gz`.
//!
//! Every upload sends its CRC32C up front (the bytes are in memory), so
//! GCS checks the object end to end and the request is a plain two-part
//! multipart upload.

use crate::{code_of, gcp_err, Code, GcpConfig};
use async_trait::async_trait;
use google_cloud_storage::client::Storage;
use std::collections::HashMap;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
use studio_core::ports::{ArtifactStore, PortError};
use tokio::sync::Mutex;

const PORT: &str = "gcs";

pub struct GcsArtifacts {
    client: Storage,
    bucket: String,
    /// Per job: the next chunk number this process expects to be free, and
    /// the sizes of chunks it has read (a follower re-reads nothing).
    logs: Mutex<HashMap<JobId, LogState>>,
}

#[derive(Default)]
struct LogState {
    next: u64,
    sizes: Vec<u64>,
}

fn chunk_name(job: &JobId, n: u64) -> String {
    format!("logs/{job}/{n:010}")
}

impl GcsArtifacts {
    /// A client for the configured bucket.
    ///
    /// # Errors
    /// A client that cannot be built (no credentials found).
    pub async fn new(cfg: &GcpConfig) -> Result<GcsArtifacts, PortError> {
        GcsArtifacts::for_bucket(&cfg.bucket, cfg.storage_endpoint.as_deref(), cfg.anonymous).await
    }

    /// A client for `bucket` (the CLI's: it needs no other GCP setting).
    ///
    /// # Errors
    /// A client that cannot be built (no credentials found).
    pub async fn for_bucket(
        bucket: &str,
        endpoint: Option<&str>,
        anonymous: bool,
    ) -> Result<GcsArtifacts, PortError> {
        let client = crate::client!(Storage::builder(), endpoint, anonymous)
            .build()
            .await
            .map_err(|e| PortError::backend(PORT, e))?;
        Ok(GcsArtifacts {
            client,
            bucket: format!("projects/_/buckets/{bucket}"),
            logs: Mutex::default(),
        })
    }

    /// The object's bytes; `None` when there is no such object.
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PortError> {
        let mut resp = match self.client.read_object(&self.bucket, name).send().await {
            Ok(r) => r,
            Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(None),
            Err(e) => return Err(gcp_err(PORT, "objects.get", e)),
        };
        let mut out = Vec::new();
        while let Some(chunk) = resp.next().await {
            out.extend_from_slice(&chunk.map_err(|e| gcp_err(PORT, "objects.get", e))?);
        }
        Ok(Some(out))
    }

    /// Writes `name` unless it exists; `false` when it did.
    async fn create(&self, name: &str, bytes: &[u8]) -> Result<bool, PortError> {
        match self
            .client
            .write_object(&self.bucket, name, bytes::Bytes::copy_from_slice(bytes))
            .set_if_generation_match(0)
            .with_known_crc32c(crc32c::crc32c(bytes))
            .send_unbuffered()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.http_status_code() == Some(412)
                    || code_of(&e) == Some(Code::FailedPrecondition) =>
            {
                Ok(false)
            }
            Err(e) => Err(gcp_err(PORT, "objects.insert", e)),
        }
    }

    async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), PortError> {
        self.client
            .write_object(&self.bucket, name, bytes::Bytes::copy_from_slice(bytes))
            .with_known_crc32c(crc32c::crc32c(bytes))
            .send_unbuffered()
            .await
            .map_err(|e| gcp_err(PORT, "objects.insert", e))?;
        Ok(())
    }

    async fn exists(&self, name: &str) -> Result<bool, PortError> {
        Ok(self.get(name).await?.is_some())
    }

    /// The first chunk number at or after `from` that is free: galloping,
    /// then bisecting, so a new writer after a long log reads O(log n)
    /// chunks, not n.
    async fn first_free(&self, job: &JobId, from: u64) -> Result<u64, PortError> {
        if !self.exists(&chunk_name(job, from)).await? {
            return Ok(from);
        }
        let (mut lo, mut step) = (from, 1u64);
        let mut hi = loop {
            let probe = lo + step;
            if !self.exists(&chunk_name(job, probe)).await? {
                break probe;
            }
            lo = probe;
            step *= 2;
        };
        // lo is taken, hi is free.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.exists(&chunk_name(job, mid)).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(hi)
    }
}

#[async_trait]
impl ArtifactStore for GcsArtifacts {
    async fn put_workspace(&self, tarball: &[u8]) -> Result<WorkspaceRef, PortError> {
        let r = WorkspaceRef::of(tarball);
        let sha = r.sha256.clone();
        self.create(&format!("workspaces/{sha}.tar.gz"), tarball)
            .await?;
        Ok(r)
    }

    async fn get_workspace(&self, r: &WorkspaceRef) -> Result<Vec<u8>, PortError> {
        let bytes = self
            .get(&format!("workspaces/{}.tar.gz", r.sha256))
            .await?
            .ok_or_else(|| PortError::NotFound(format!("workspace {}", r.sha256)))?;
        r.verify(PORT, bytes)
    }

    async fn append_log(&self, job: &JobId, bytes: &[u8]) -> Result<(), PortError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut logs = self.logs.lock().await;
        let state = logs.entry(job.clone()).or_default();
        // A writer that has appended before tries the number after its
        // last chunk at once (one request); a new writer, or one another
        // writer got ahead of, finds the first free number. The
        // conditional write decides every race.
        let mut n = state.next;
        if state.next == 0 || !self.create(&chunk_name(job, n), bytes).await? {
            n = self.first_free(job, n).await?;
            while !self.create(&chunk_name(job, n), bytes).await? {
                n += 1;
            }
        }
        state.next = n + 1;
        Ok(())
    }

    async fn read_log(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, PortError> {
        let mut logs = self.logs.lock().await;
        let state = logs.entry(job.clone()).or_default();
        let mut out = Vec::new();
        let mut pos = 0u64;
        let mut n = 0u64;
        loop {
            if let Some(&size) = state.sizes.get(n as usize) {
                if pos + size <= offset {
                    pos += size;
                    n += 1;
                    continue;
                }
            }
            let Some(chunk) = self.get(&chunk_name(job, n)).await? else {
                break;
            };
            if state.sizes.len() == n as usize {
                state.sizes.push(chunk.len() as u64);
            }
            let skip = offset.saturating_sub(pos).min(chunk.len() as u64) as usize;
            out.extend_from_slice(&chunk[skip..]);
            pos += chunk.len() as u64;
            n += 1;
        }
        Ok(out)
    }

    async fn put_checkpoint(
        &self,
        job: &JobId,
        attempt: u32,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        self.put(&format!("checkpoints/{job}/{attempt}.tar.gz"), tarball)
            .await
    }

    async fn get_checkpoint(&self, job: &JobId, attempt: u32) -> Result<Vec<u8>, PortError> {
        self.get(&format!("checkpoints/{job}/{attempt}.tar.gz"))
            .await?
            .ok_or_else(|| PortError::NotFound(format!("checkpoint of {job} attempt {attempt}")))
    }
}
