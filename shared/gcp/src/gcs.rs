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
//! - checkpoints at `checkpoints/<job>/attempt-<n>-<sha256>.tar.gz`, never
//!   replaced;
//! - outputs and their manifests by content at `files/<job>/<sha256>`,
//!   streamed from disk, written only if absent.
//!
//! Every upload from memory sends its CRC32C up front, so GCS checks the
//! object end to end and the request is a plain two-part multipart upload.
//! Files stream from disk with their size known, which the client turns
//! into a resumable upload above its threshold (it resumes a broken
//! connection within the upload; a new process starts the object over).

use crate::config::{code_of, gcp_err, GcpConfig};
use async_trait::async_trait;
use google_cloud_gax::error::rpc::Code;
use google_cloud_storage::client::Storage;
use std::collections::HashMap;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
use studio_core::job::CheckpointRef;
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

fn checkpoint_name(job: &JobId, r: &CheckpointRef) -> String {
    format!(
        "checkpoints/{job}/attempt-{}-{}.tar.gz",
        r.attempt, r.sha256
    )
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
        let client = crate::config::client!(Storage::builder(), endpoint, anonymous)
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
        r: &CheckpointRef,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        self.create(&checkpoint_name(job, r), tarball).await?;
        Ok(())
    }

    async fn get_checkpoint(&self, job: &JobId, r: &CheckpointRef) -> Result<Vec<u8>, PortError> {
        self.get(&checkpoint_name(job, r)).await?.ok_or_else(|| {
            PortError::NotFound(format!("checkpoint of {job} attempt {}", r.attempt))
        })
    }

    async fn put_blob(
        &self,
        job: &JobId,
        sha256: &str,
        src: &std::path::Path,
    ) -> Result<(), PortError> {
        // The checksum up front, as for every upload: GCS checks the
        // object end to end (and the emulator accepts no other way).
        let path = src.to_path_buf();
        let crc = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(path)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut crc = 0u32;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok::<u32, std::io::Error>(crc);
                }
                crc = crc32c::crc32c_append(crc, &buf[..n]);
            }
        })
        .await
        .map_err(|e| PortError::backend(PORT, e))?
        .map_err(|e| PortError::backend(PORT, e))?;
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| PortError::backend(PORT, e))?;
        match self
            .client
            .write_object(&self.bucket, format!("files/{job}/{sha256}"), file)
            .set_if_generation_match(0)
            .with_known_crc32c(crc)
            .send_unbuffered()
            .await
        {
            Ok(_) => Ok(()),
            // Stored already: same name, same content.
            Err(e)
                if e.http_status_code() == Some(412)
                    || code_of(&e) == Some(Code::FailedPrecondition) =>
            {
                Ok(())
            }
            Err(e) => Err(gcp_err(PORT, "objects.insert", e)),
        }
    }

    async fn get_blob(
        &self,
        job: &JobId,
        sha256: &str,
        dest: &std::path::Path,
    ) -> Result<(), PortError> {
        use tokio::io::AsyncWriteExt;
        let name = format!("files/{job}/{sha256}");
        let mut resp = match self.client.read_object(&self.bucket, &name).send().await {
            Ok(r) => r,
            Err(e) if code_of(&e) == Some(Code::NotFound) => {
                return Err(PortError::NotFound(format!("gs object {name}")))
            }
            Err(e) => return Err(gcp_err(PORT, "objects.get", e)),
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PortError::backend(PORT, e))?;
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| gcp_err(PORT, "objects.get", e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| PortError::backend(PORT, e))?;
        }
        file.flush().await.map_err(|e| PortError::backend(PORT, e))
    }
}
