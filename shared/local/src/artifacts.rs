//! [`ArtifactStore`] as a directory: workspaces under
//! `artifacts/workspaces/<sha256>.tar.gz`, each job's log at `jobs/<id>/log`,
//! its checkpoints at `jobs/<id>/checkpoints/attempt-<n>-<sha256>.tar.gz`, its
//! outputs and their manifests by content at `jobs/<id>/files/<sha256>`.

use crate::files;
use async_trait::async_trait;
use std::io::Write;
use std::path::PathBuf;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
use studio_core::job::CheckpointRef;
use studio_core::ports::{ArtifactStore, PortError};

const PORT: &str = "local artifacts";

pub struct DirArtifacts {
    root: PathBuf,
}

fn io(e: std::io::Error) -> PortError {
    PortError::backend(PORT, e)
}

impl DirArtifacts {
    /// `root` is `$STUDIO_HOME`.
    pub fn new(root: PathBuf) -> Self {
        DirArtifacts { root }
    }

    fn workspace_path(&self, sha: &str) -> PathBuf {
        self.root
            .join("artifacts/workspaces")
            .join(format!("{sha}.tar.gz"))
    }

    /// The directory a job's files (log, attempts, checkpoints, outputs) live in.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.root.join("jobs").join(job.as_str())
    }

    fn checkpoint_path(&self, job: &JobId, r: &CheckpointRef) -> PathBuf {
        self.job_dir(job)
            .join("checkpoints")
            .join(format!("attempt-{}-{}.tar.gz", r.attempt, r.sha256))
    }

    /// `jobs/<id>/files/<sha256>`; a name that is not a SHA-256 is refused.
    fn blob_path(&self, job: &JobId, sha256: &str) -> Result<PathBuf, PortError> {
        if !studio_core::contract::is_sha256(sha256) {
            return Err(PortError::NotFound(format!("file {sha256:?} of job {job}")));
        }
        Ok(self.job_dir(job).join("files").join(sha256))
    }
}

#[async_trait]
impl ArtifactStore for DirArtifacts {
    async fn put_workspace(&self, tarball: &[u8]) -> Result<WorkspaceRef, PortError> {
        let r = WorkspaceRef::of(tarball);
        let sha = r.sha256.clone();
        let path = self.workspace_path(&sha);
        if !path.exists() {
            let dir = path.parent().expect("workspace path has a parent");
            files::create_dir_all(dir).map_err(io)?;
            let tmp = dir.join(format!(".{sha}.{}", std::process::id()));
            files::write(&tmp, tarball).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(r)
    }

    async fn get_workspace(&self, r: &WorkspaceRef) -> Result<Vec<u8>, PortError> {
        if r.sha256.len() != 64 || !r.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PortError::NotFound(format!("workspace {}", r.sha256)));
        }
        let bytes = match std::fs::read(self.workspace_path(&r.sha256)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PortError::NotFound(format!("workspace {}", r.sha256)))
            }
            Err(e) => return Err(io(e)),
        };
        r.verify(PORT, bytes)
    }

    async fn append_log(&self, job: &JobId, bytes: &[u8]) -> Result<(), PortError> {
        let dir = self.job_dir(job);
        files::create_dir_all(&dir).map_err(io)?;
        let mut f = files::append(&dir.join("log")).map_err(io)?;
        f.write_all(bytes).map_err(io)
    }

    async fn read_log(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, PortError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(self.job_dir(job).join("log")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(io)?;
        Ok(out)
    }

    async fn put_checkpoint(
        &self,
        job: &JobId,
        r: &CheckpointRef,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        let path = self.checkpoint_path(job, r);
        let dir = path.parent().expect("checkpoint path has a parent");
        files::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".{}.{}", r.sha256, std::process::id()));
        files::write(&tmp, tarball).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    async fn get_checkpoint(&self, job: &JobId, r: &CheckpointRef) -> Result<Vec<u8>, PortError> {
        let path = self.checkpoint_path(job, r);
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PortError::NotFound(
                format!("checkpoint {}", path.display()),
            )),
            Err(e) => Err(io(e)),
        }
    }

    async fn put_blob(
        &self,
        job: &JobId,
        sha256: &str,
        src: &std::path::Path,
    ) -> Result<(), PortError> {
        let path = self.blob_path(job, sha256)?;
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("blob path has a parent");
        files::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".{sha256}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        // A link, not a copy, where the attempt's directory is on the same
        // file system (a multi-GB model is not stored twice): the script is
        // gone when outputs are collected, and the attempt directory is
        // removed, not rewritten, once the job ends.
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)
    }

    async fn get_blob(
        &self,
        job: &JobId,
        sha256: &str,
        dest: &std::path::Path,
    ) -> Result<(), PortError> {
        let path = self.blob_path(job, sha256)?;
        match std::fs::copy(&path, dest) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => {
                Err(PortError::NotFound(format!("file {sha256} of job {job}")))
            }
            Err(e) => Err(io(e)),
        }
    }
}
