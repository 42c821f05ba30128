//! [`ArtifactStore`] on S3: workspaces at `workspaces/<sha256>.tar.gz`
//! (content-addressed, written once, verified on read), logs as numbered
//! chunks under `logs/<job>/` (S3 has no append: a chunk per flush, read back
//! in key order), checkpoints at `checkpoints/<job>/attempt-<n>-<sha256>.tar.gz`
//! (never replaced), outputs and their manifests by content at
//! `files/<job>/<sha256>`.
//!
//! Files above [`MULTIPART_THRESHOLD`] go up in parts (S3 caps a single
//! PUT at 5 GiB and a part at 5 MiB–5 GiB, 10,000 parts). An upload is
//! resumable: the key is the content's hash, so a part an earlier, broken
//! upload of the same key left (`ListMultipartUploads`, `ListParts`) with
//! the size the part must have holds the same bytes and is not sent again.

use crate::error::AwsError;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
use studio_core::job::CheckpointRef;
use studio_core::ports::{ArtifactStore, PortError};

const PORT: &str = "s3";

pub struct S3Artifacts {
    client: Client,
    bucket: String,
    threshold: u64,
    part_size: u64,
}

/// Files larger than this go up in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// The part size (grown for files that would need more than 10,000 parts).
pub const PART_SIZE: u64 = 16 << 20;

/// What one [`S3Artifacts::put_file`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutStats {
    /// Parts of the object (0: one plain PUT, or the object was there).
    pub parts: u32,
    /// Parts an earlier upload of the same content had already sent.
    pub reused: u32,
    /// The object was already stored whole.
    pub present: bool,
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
            threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
        }
    }

    /// Other multipart sizes (tests use S3's smallest part, 5 MiB).
    #[must_use]
    pub fn with_parts(mut self, threshold: u64, part_size: u64) -> Self {
        self.threshold = threshold;
        self.part_size = part_size.max(5 << 20);
        self
    }

    fn blob_key(job: &JobId, sha: &str) -> String {
        format!("files/{job}/{sha}")
    }

    /// Uploads the file at `src` to `key` unless an object of its size is
    /// there: one PUT up to the threshold, else a multipart upload that
    /// resumes one an earlier try left.
    ///
    /// # Errors
    /// The file cannot be read or S3 refuses a call.
    pub async fn put_file(&self, key: &str, src: &std::path::Path) -> Result<PutStats, PortError> {
        use aws_sdk_s3::primitives::Length;
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let size = std::fs::metadata(src)
            .map_err(|e| PortError::backend(PORT, e))?
            .len();
        // Under least privilege a HEAD of a missing key is a 403, not a 404:
        // any failure means "not there".
        if let Ok(h) = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            if h.content_length() == Some(size as i64) {
                return Ok(PutStats {
                    present: true,
                    ..PutStats::default()
                });
            }
        }
        let body = |offset: u64, len: u64| async move {
            ByteStream::read_from()
                .path(src)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| PortError::backend(PORT, e))
        };
        if size <= self.threshold {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(body(0, size).await?)
                .send()
                .await
                .map_err(sdk("PutObject"))?;
            return Ok(PutStats::default());
        }
        let part = self.part_size.max(size.div_ceil(10_000));
        let count = size.div_ceil(part) as i32;
        let len_of = |n: i32| part.min(size - (n as u64 - 1) * part);
        // An upload of this key left behind: same key, same content.
        let mut upload_id = None;
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(sdk("ListMultipartUploads"))?;
        if let Some(u) = listed.uploads().iter().find(|u| u.key() == Some(key)) {
            upload_id = u.upload_id().map(str::to_string);
        }
        let mut done: std::collections::BTreeMap<i32, String> = Default::default();
        if let Some(id) = &upload_id {
            let mut pages = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for p in page.map_err(sdk("ListParts"))?.parts() {
                    if let (Some(n), Some(etag), Some(sz)) = (p.part_number(), p.e_tag(), p.size())
                    {
                        if n >= 1 && n <= count && sz as u64 == len_of(n) {
                            done.insert(n, etag.to_string());
                        }
                    }
                }
            }
        }
        let upload_id = match upload_id {
            Some(id) => id,
            None => self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(sdk("CreateMultipartUpload"))?
                .upload_id()
                .ok_or_else(|| PortError::backend(PORT, "CreateMultipartUpload: no upload id"))?
                .to_string(),
        };
        let reused = done.len() as u32;
        for n in 1..=count {
            if done.contains_key(&n) {
                continue;
            }
            let r = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(n)
                .body(body((n as u64 - 1) * part, len_of(n)).await?)
                .send()
                .await
                .map_err(sdk("UploadPart"))?;
            done.insert(n, r.e_tag().unwrap_or_default().to_string());
        }
        let parts = done
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect::<Vec<_>>();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(sdk("CompleteMultipartUpload"))?;
        Ok(PutStats {
            parts: count as u32,
            reused,
            present: false,
        })
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
        r: &CheckpointRef,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        self.put(&checkpoint_key(job, r), tarball.to_vec()).await
    }

    async fn get_checkpoint(&self, job: &JobId, r: &CheckpointRef) -> Result<Vec<u8>, PortError> {
        let key = checkpoint_key(job, r);
        self.get(&key)
            .await?
            .ok_or_else(|| PortError::NotFound(format!("s3://{}/{key}", self.bucket)))
    }

    async fn put_blob(
        &self,
        job: &JobId,
        sha256: &str,
        src: &std::path::Path,
    ) -> Result<(), PortError> {
        self.put_file(&Self::blob_key(job, sha256), src).await?;
        Ok(())
    }

    async fn get_blob(
        &self,
        job: &JobId,
        sha256: &str,
        dest: &std::path::Path,
    ) -> Result<(), PortError> {
        let key = Self::blob_key(job, sha256);
        let o = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(PortError::NotFound(format!("s3://{}/{key}", self.bucket)))
            }
            Err(e) => return Err(sdk("GetObject")(e)),
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PortError::backend(PORT, e))?;
        let mut body = o.body.into_async_read();
        tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| PortError::backend(PORT, e))?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| PortError::backend(PORT, e))
    }
}

/// Each checkpoint under its attempt and hash: never replaced, so a new
/// attempt never reads an object an old attempt is still writing.
fn checkpoint_key(job: &JobId, r: &CheckpointRef) -> String {
    format!(
        "checkpoints/{job}/attempt-{}-{}.tar.gz",
        r.attempt, r.sha256
    )
}

/// Jobs' `s3://` inputs, read with whatever credentials `client` has (the
/// machine's role on EC2, the web identity on GCE, the user's locally).
pub struct S3Inputs {
    client: tokio::sync::OnceCell<Client>,
}

impl S3Inputs {
    pub fn new(client: Client) -> Self {
        S3Inputs {
            client: tokio::sync::OnceCell::new_with(Some(client)),
        }
    }

    /// With the default chain's configuration (the user's, on a local
    /// worker), loaded at the first fetch: loading it probes the
    /// environment, and off EC2 the metadata service, which a worker whose
    /// jobs name no input must not wait for.
    pub fn from_default_chain() -> Self {
        S3Inputs {
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let sdk = match crate::sdk::sdk_config_from_env(None).await {
                    Some(sdk) => sdk,
                    None => crate::sdk::sdk_config("us-east-1").await,
                };
                client(&sdk)
            })
            .await
    }
}

/// Where the object `key`, found under `prefix`, goes below the input's
/// directory: its path below the prefix, or its own name when the prefix
/// names it. `None` for keys that are not below the prefix at a `/` (a
/// prefix `data` does not take `database/x`) and folder markers; an error
/// for a key that would leave the directory.
fn input_rel(prefix: &str, key: &str) -> Result<Option<String>, PortError> {
    if key.ends_with('/') {
        return Ok(None);
    }
    let rel = if key == prefix {
        key.rsplit('/').next().unwrap_or(key)
    } else if prefix.is_empty() || prefix.ends_with('/') {
        &key[prefix.len()..]
    } else if key.as_bytes().get(prefix.len()) == Some(&b'/') {
        &key[prefix.len() + 1..]
    } else {
        return Ok(None);
    };
    let safe = !rel.is_empty()
        && std::path::Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !safe {
        return Err(PortError::backend(
            PORT,
            format!("object key {key:?} would be written outside the input's directory"),
        ));
    }
    Ok(Some(rel.to_string()))
}

#[async_trait]
impl studio_core::ports::InputSource for S3Inputs {
    async fn fetch(
        &self,
        url: &str,
        dest: &std::path::Path,
    ) -> Result<studio_core::ports::Fetched, PortError> {
        use tokio::io::AsyncWriteExt;
        let (bucket, prefix) = studio_core::contract::parse_s3_url(url)
            .ok_or_else(|| PortError::NotFound(format!("input {url:?} (not an s3:// URL)")))?;
        let mut got = studio_core::ports::Fetched::default();
        let s3 = self.client().await;
        let mut pages = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(sdk("ListObjectsV2"))?;
            for o in page.contents() {
                let key = o.key().unwrap_or_default();
                let Some(rel) = input_rel(prefix, key)? else {
                    continue;
                };
                let path = dest.join(&rel);
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| PortError::backend(PORT, e))?;
                }
                let obj = s3
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(sdk("GetObject"))?;
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?;
                let n = tokio::io::copy(&mut obj.body.into_async_read(), &mut file)
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?;
                file.flush()
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?;
                got.files += 1;
                got.bytes += n;
            }
        }
        if got.files == 0 {
            return Err(PortError::NotFound(format!("objects under {url}")));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::input_rel;

    #[test]
    fn input_keys_land_below_the_input_directory() {
        let rel = |p: &str, k: &str| input_rel(p, k).unwrap();
        assert_eq!(rel("data/", "data/a/b.csv").as_deref(), Some("a/b.csv"));
        assert_eq!(rel("data", "data/a.csv").as_deref(), Some("a.csv"));
        assert_eq!(rel("data", "database/a.csv"), None, "not below the prefix");
        assert_eq!(rel("data/x.csv", "data/x.csv").as_deref(), Some("x.csv"));
        assert_eq!(rel("", "top.txt").as_deref(), Some("top.txt"));
        assert_eq!(rel("data/", "data/dir/"), None, "a folder marker");
        assert!(input_rel("data/", "data/../../etc/cron.d/x").is_err());
        assert!(input_rel("data/", "data//abs").is_err());
    }
}
