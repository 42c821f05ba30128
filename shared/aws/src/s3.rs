//! [`ArtifactStore`] on S3: workspaces at `workspaces/<sha256>.tar.gz`
//! (content-addressed, written once, verified on read), logs as numbered
//! chunks under `logs/<job>/` (S3 has no append: a chunk per flush, read back
//! in key order), checkpoints at `checkpoints/<job>.tar.gz` (the latest wins).

use crate::AwsError;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
use studio_core::ports::{ArtifactStore, PortError};

const PORT: &str = "s3";

pub struct S3Artifacts {
    client: Client,
    bucket: String,
}

fn sdk<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> PortError {
    move |e| PortError::backend(PORT, AwsError::sdk(op, e))
}

/// An S3 client for `sdk`: path-style addressing when an endpoint is given
/// (an emulator on `localhost` has no `BUCKET.localhost` host names).
pub fn client(sdk: &aws_config::SdkConfig) -> Client {
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build(),
    )
}

impl S3Artifacts {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Artifacts {
            client,
            bucket: bucket.into(),
        }
    }

    /// A client for `bucket`; path-style addressing when a custom endpoint
    /// (an emulator) is configured, since it serves no bucket subdomains.
    pub fn from_sdk(sdk: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        S3Artifacts::new(client(sdk), bucket)
    }

    fn workspace_key(sha: &str) -> String {
        format!("workspaces/{sha}.tar.gz")
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(
                o.body
                    .collect()
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?
                    .into_bytes()
                    .to_vec(),
            )),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk("GetObject")(e)),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(sdk("PutObject"))?;
        Ok(())
    }
}

#[async_trait]
impl ArtifactStore for S3Artifacts {
    async fn put_workspace(&self, tarball: &[u8]) -> Result<WorkspaceRef, PortError> {
        let r = WorkspaceRef::of(tarball);
        let sha = r.sha256.clone();
        let key = Self::workspace_key(&sha);
        let exists = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .is_ok();
        if !exists {
            self.put(&key, tarball.to_vec()).await?;
        }
        Ok(r)
    }

    async fn get_workspace(&self, r: &WorkspaceRef) -> Result<Vec<u8>, PortError> {
        let bytes = self
            .get(&Self::workspace_key(&r.sha256))
            .await?
            .ok_or_else(|| PortError::NotFound(format!("workspace {}", r.sha256)))?;
        r.verify(PORT, bytes)
    }

    async fn append_log(&self, job: &JobId, bytes: &[u8]) -> Result<(), PortError> {
        // Keys sort in time order: milliseconds, then a ULID against ties.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let key = format!("logs/{job}/{now:015}-{}", ulid::Ulid::new());
        self.put(&key, bytes.to_vec()).await
    }

    async fn read_log(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, PortError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("logs/{job}/"))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(sdk("ListObjectsV2"))?;
            for o in page.contents() {
                keys.push((
                    o.key().unwrap_or_default().to_string(),
                    o.size().unwrap_or(0) as u64,
                ));
            }
        }
        keys.sort();
        let mut out = Vec::new();
        let mut pos = 0u64;
        for (key, size) in keys {
            if pos + size <= offset {
                pos += size;
                continue;
            }
            let chunk = self.get(&key).await?.unwrap_or_default();
            let skip = offset.saturating_sub(pos) as usize;
            out.extend_from_slice(&chunk[skip.min(chunk.len())..]);
            pos += size;
        }
        Ok(out)
    }

    async fn put_checkpoint(
        &self,
        job: &JobId,
        attempt: u32,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        self.put(&checkpoint_key(job, attempt), tarball.to_vec())
            .await
    }

    async fn get_checkpoint(&self, job: &JobId, attempt: u32) -> Result<Vec<u8>, PortError> {
        let key = checkpoint_key(job, attempt);
        self.get(&key)
            .await?
            .ok_or_else(|| PortError::NotFound(format!("s3://{}/{key}", self.bucket)))
    }
}

/// Each attempt's checkpoint under its own key: a new attempt never reads
/// an object an old attempt is still writing.
fn checkpoint_key(job: &JobId, attempt: u32) -> String {
    format!("checkpoints/{job}/attempt-{attempt}.tar.gz")
}
