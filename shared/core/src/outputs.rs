//! A job's outputs: what an attempt leaves behind, stored by content.
//!
//! At the end of every attempt (finished, failed, cancelled, handed back)
//! the worker collects `$STUDIO_OUTPUT_DIR` and the workspace paths the job
//! names (`--output`), hashes every regular file, uploads those the store
//! does not hold yet (`ArtifactStore::put_blob`, one object per distinct
//! content per job, so a file unchanged between attempts is stored once)
//! and writes a [`Manifest`] (path, size, SHA-256), itself stored by
//! content and named on the attempt's record ([`OutputsRef`]).
//!
//! [`crate::outputs_store::pull`] brings an attempt's outputs back: every
//! file is checked against its hash, and a file already present with the right hash is skipped.
//!
//! Symbolic links are never followed (a script could point one at the
//! machine's secrets) and are left out, as is anything that is not a
//! regular file.
//!
//! This module is the data (manifests, hashing, the walk); moving it to
//! and from an artifact store is [`crate::outputs_store`].

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// What one attempt left: every output file by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub files: Vec<OutputFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative, `/`-separated, never `..`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// An attempt's outputs as its record names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputsRef {
    /// SHA-256 of the manifest (JSON), stored among the job's files.
    pub manifest: String,
    pub files: u32,
    pub bytes: u64,
}

/// SHA-256 and size of the file at `path`, read in blocks (never whole).
///
/// # Errors
/// I/O errors.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = open_nofollow(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The regular files to collect: everything under `out_dir` at its path
/// there, then each of `named` (relative to `workspace`; a file or a
/// directory) at its workspace path. A path given twice keeps the first.
/// Named paths that do not exist are returned in the second list.
///
/// The script owns both directories, so they are walked from descriptors
/// without following any link ([`crate::worker::jobfs`]): `out_dir` itself
/// replaced by a link to `/`, or `--output a/b` with `a` a link, collects
/// nothing of the machine's. Given an `owner`, only that uid's files are
/// taken (a hard link to a file of root's is not the job's).
pub fn gather(
    out_dir: &Path,
    workspace: &Path,
    named: &[String],
    owner: Option<u32>,
) -> (BTreeMap<String, PathBuf>, Vec<String>) {
    use crate::worker::jobfs::Dir;
    let mut files = BTreeMap::new();
    if let Ok(d) = Dir::open(out_dir) {
        for e in d.files(owner) {
            let at = out_dir.join(&e.rel);
            files.entry(e.rel).or_insert(at);
        }
    }
    let ws = Dir::open(workspace).ok();
    let mut missing = Vec::new();
    for n in named {
        let rel = Path::new(n);
        if !safe_rel(n) {
            missing.push(n.clone());
            continue;
        }
        let prefix = rel.to_string_lossy().replace('\\', "/");
        let Some(ws) = &ws else {
            missing.push(n.clone());
            continue;
        };
        if let Ok(sub) = ws.sub(rel) {
            for e in sub.files(owner) {
                let at = workspace.join(rel).join(&e.rel);
                files.entry(format!("{prefix}/{}", e.rel)).or_insert(at);
            }
        } else if ws.open_file(rel, owner).is_ok() {
            files.entry(prefix).or_insert(workspace.join(rel));
        } else {
            missing.push(n.clone());
        }
    }
    (files, missing)
}

pub(crate) fn safe_rel(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_takes_regular_files_and_never_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let ws = d.path().join("ws");
        std::fs::create_dir_all(out.join("results")).unwrap();
        std::fs::create_dir_all(ws.join("runs/a")).unwrap();
        std::fs::write(out.join("model.bin"), b"m").unwrap();
        std::fs::write(out.join("results/r.csv"), b"r").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.join("secret")).unwrap();
        std::os::unix::fs::symlink("/", ws.join("root")).unwrap();
        std::fs::write(ws.join("runs/a/log.txt"), b"l").unwrap();
        std::fs::write(ws.join("model.bin"), b"other").unwrap();
        let named = [
            "runs".to_string(),
            "root/etc/passwd".to_string(),
            "model.bin".to_string(),
            "nope.txt".to_string(),
        ];
        let (files, missing) = gather(&out, &ws, &named, None);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["model.bin", "results/r.csv", "runs/a/log.txt"]);
        // STUDIO_OUTPUT_DIR's model.bin wins over the workspace's.
        assert_eq!(files["model.bin"], out.join("model.bin"));
        assert_eq!(missing, ["root/etc/passwd", "nope.txt"]);
        // The output directory itself replaced by a link: nothing is taken.
        std::fs::remove_dir_all(&out).unwrap();
        std::os::unix::fs::symlink(&ws, &out).unwrap();
        let (files, _) = gather(&out, &ws, &[], None);
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn hashing_refuses_a_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"abc").unwrap();
        std::os::unix::fs::symlink(d.path().join("f"), d.path().join("l")).unwrap();
        let (sha, size) = hash_file(&d.path().join("f")).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hash_file(&d.path().join("l")).is_err());
    }
}
