//! [`ArtifactStore`] as a directory: workspaces under
//! `artifacts/workspaces/<sha256>.tar.gz`, each job's log at `jobs/<id>/log`,
//! its checkpoints at `jobs/<id>/checkpoints/attempt-<n>-<sha256>.tar.gz`, its
//! outputs and their manifests by content at `jobs/<id>/files/<sha256>`.

use crate::files;
use async_trait::async_trait;
use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
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
        f.write_all(bytes).map_err(io)?;
        crate::wake::notify(&self.root, &crate::wake::job_topic(job.as_str()));
        Ok(())
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
        // removed, not rewritten, once the job ends. Only of a file that is
        // private already (a link shares the file's mode, and the store's
        // files are `0600`): what a local worker's script writes is (it
        // runs with umask 077); anything else is copied into a `0600` file.
        let private = std::fs::symlink_metadata(src)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 == 0);
        if !(private && std::fs::hard_link(src, &tmp).is_ok()) {
            let mut from = std::fs::File::open(src).map_err(io)?;
            let mut to = files::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io)?;
            std::io::copy(&mut from, &mut to).map_err(io)?;
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
        let mut from = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PortError::NotFound(format!("file {sha256} of job {job}")))
            }
            Err(e) => return Err(io(e)),
        };
        // Created as any new file of the caller's is (not with the store's
        // `0600`), as the cloud stores do.
        let mut to = std::fs::File::create(dest).map_err(io)?;
        std::io::copy(&mut from, &mut to).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn stored_outputs_are_private_and_a_readable_file_is_copied_not_linked() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let store = DirArtifacts::new(home.clone());
        let job = JobId::new("01jobprivate".to_string()).unwrap();
        let readable = d.path().join("readable");
        std::fs::write(&readable, b"shared").unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
        let private = d.path().join("private");
        std::fs::write(&private, b"mine").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        store.put_blob(&job, &a, &readable).await.unwrap();
        store.put_blob(&job, &b, &private).await.unwrap();
        let (blob_a, blob_b) = (
            store.blob_path(&job, &a).unwrap(),
            store.blob_path(&job, &b).unwrap(),
        );
        assert_eq!(mode(&blob_a), 0o600);
        assert_eq!(mode(&readable), 0o644, "the original is left as it was");
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_ne!(ino(&blob_a), ino(&readable), "copied");
        assert_eq!(ino(&blob_b), ino(&private), "linked");
        assert_eq!(mode(&blob_b), 0o600);
        for dir in [
            home.join("jobs"),
            store.job_dir(&job),
            blob_a.parent().unwrap().into(),
        ] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        // Fetched back, a file is the caller's own: not the store's 0600.
        let got = d.path().join("got");
        store.get_blob(&job, &a, &got).await.unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), b"shared");
        let probe = d.path().join("probe");
        std::fs::File::create(&probe).unwrap();
        assert_eq!(mode(&got), mode(&probe), "the umask's mode, not the blob's");
    }
}
