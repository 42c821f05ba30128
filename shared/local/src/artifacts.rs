//! [`ArtifactStore`] as a directory: workspaces under
//! `artifacts/workspaces/<sha256>.tar.gz`, each job's log at `jobs/<id>/log`.

use crate::files;
use async_trait::async_trait;
use std::io::Write;
use std::path::PathBuf;
use studio_core::contract::WorkspaceRef;
use studio_core::ids::JobId;
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

    /// The directory a job's files (log, attempts, checkpoints) live in.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.root.join("jobs").join(job.as_str())
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
        attempt: u32,
        tarball: &[u8],
    ) -> Result<(), PortError> {
        let dir = self.job_dir(job).join("checkpoints");
        files::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(".attempt-{attempt}.{}", std::process::id()));
        files::write(&tmp, tarball).map_err(io)?;
        std::fs::rename(&tmp, dir.join(format!("attempt-{attempt}.tar.gz"))).map_err(io)
    }

    async fn get_checkpoint(&self, job: &JobId, attempt: u32) -> Result<Vec<u8>, PortError> {
        let path = self
            .job_dir(job)
            .join("checkpoints")
            .join(format!("attempt-{attempt}.tar.gz"));
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PortError::NotFound(
                format!("checkpoint {}", path.display()),
            )),
            Err(e) => Err(io(e)),
        }
    }
}
