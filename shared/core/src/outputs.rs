//! A job's outputs: what an attempt leaves behind, stored by content.
//!
//! At the end of every attempt (finished, failed, cancelled, handed back)
//! the worker collects `$STUDIO_OUTPUT_DIR` and the workspace paths the job
//! names (`--output`), hashes every regular file, uploads those the store
//! does not hold yet ([`ArtifactStore::put_blob`], one object per distinct
//! content per job, so a file unchanged between attempts is stored once)
//! and writes a [`Manifest`] (path, size, SHA-256), itself stored by
//! content and named on the attempt's record ([`OutputsRef`]).
//!
//! [`pull`] brings an attempt's outputs back: every file is checked against
//! its hash, and a file already present with the right hash is skipped.
//!
//! Symbolic links are never followed (a script could point one at the
//! machine's secrets) and are left out, as is anything that is not a
//! regular file.

use crate::ids::JobId;
use crate::ports::{ArtifactStore, PortError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashSet};
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
pub fn gather(
    out_dir: &Path,
    workspace: &Path,
    named: &[String],
) -> (BTreeMap<String, PathBuf>, Vec<String>) {
    let mut files = BTreeMap::new();
    walk(out_dir, "", &mut files);
    let mut missing = Vec::new();
    for n in named {
        let rel = Path::new(n);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            missing.push(n.clone());
            continue;
        }
        // No link on the way there either: `--output a/b` with `a` a link
        // to `/` must not collect the machine's files.
        let mut at = workspace.to_path_buf();
        let mut ok = true;
        for c in rel.components() {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if !m.file_type().is_symlink() => {}
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            missing.push(n.clone());
            continue;
        }
        let prefix = rel.to_string_lossy().replace('\\', "/");
        if at.is_dir() {
            walk(&at, &prefix, &mut files);
        } else if at.is_file() {
            files.entry(prefix).or_insert(at);
        } else {
            missing.push(n.clone());
        }
    }
    (files, missing)
}

fn walk(dir: &Path, prefix: &str, into: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if t.is_dir() {
            walk(&e.path(), &rel, into);
        } else if t.is_file() {
            into.entry(rel).or_insert_with(|| e.path());
        }
    }
}

/// What [`upload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploaded {
    pub outputs: Option<OutputsRef>,
    /// Files whose content was sent (the others the store held already).
    pub sent: u32,
}

/// Hashes `files`, stores those not in `known` (hashes the store already
/// holds for this job) and then the manifest. `None` when there is nothing.
///
/// # Errors
/// The first file that cannot be read or stored.
pub async fn upload(
    artifacts: &dyn ArtifactStore,
    job: &JobId,
    files: &BTreeMap<String, PathBuf>,
    known: &HashSet<String>,
    scratch: &Path,
) -> Result<Uploaded, String> {
    if files.is_empty() {
        return Ok(Uploaded::default());
    }
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        files: Vec::new(),
    };
    let mut sent = HashSet::new();
    for (rel, path) in files {
        let p = path.clone();
        let (sha, size) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{rel}: {e}"))?;
        if !known.contains(&sha) && !sent.contains(&sha) {
            artifacts
                .put_blob(job, &sha, path)
                .await
                .map_err(|e| format!("{rel}: {e}"))?;
            sent.insert(sha.clone());
        }
        manifest.files.push(OutputFile {
            path: rel.clone(),
            size,
            sha256: sha,
        });
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let sha = hex::encode(sha2::Sha256::digest(&json));
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let tmp = scratch.join(format!("manifest-{sha}.json"));
    std::fs::write(&tmp, &json).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let put = artifacts.put_blob(job, &sha, &tmp).await;
    let _ = std::fs::remove_file(&tmp);
    put.map_err(|e| format!("manifest: {e}"))?;
    Ok(Uploaded {
        outputs: Some(OutputsRef {
            manifest: sha,
            files: manifest.files.len() as u32,
            bytes: manifest.files.iter().map(|f| f.size).sum(),
        }),
        sent: sent.len() as u32,
    })
}

/// Reads and checks the manifest `r` names.
///
/// # Errors
/// Not found, corrupt or not a manifest.
pub async fn manifest(
    artifacts: &dyn ArtifactStore,
    job: &JobId,
    r: &OutputsRef,
    scratch: &Path,
) -> Result<Manifest, PortError> {
    std::fs::create_dir_all(scratch).map_err(|e| PortError::backend("outputs", e))?;
    let tmp = scratch.join(format!(".manifest-{}.{}", r.manifest, std::process::id()));
    artifacts.get_blob(job, &r.manifest, &tmp).await?;
    let bytes = std::fs::read(&tmp).map_err(|e| PortError::backend("outputs", e));
    let _ = std::fs::remove_file(&tmp);
    let bytes = bytes?;
    if hex::encode(sha2::Sha256::digest(&bytes)) != r.manifest {
        return Err(PortError::backend(
            "outputs",
            format!("manifest {} is corrupt", r.manifest),
        ));
    }
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| PortError::backend("outputs", format!("manifest {}: {e}", r.manifest)))?;
    if m.version != MANIFEST_VERSION {
        return Err(PortError::backend(
            "outputs",
            format!(
                "manifest version {} (this build reads {MANIFEST_VERSION})",
                m.version
            ),
        ));
    }
    if let Some(f) = m
        .files
        .iter()
        .find(|f| !crate::contract::is_sha256(&f.sha256) || !safe_rel(&f.path))
    {
        return Err(PortError::backend(
            "outputs",
            format!("manifest {} names an unsafe file {:?}", r.manifest, f.path),
        ));
    }
    Ok(m)
}

fn safe_rel(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// One file [`pull`] looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    Wrote {
        path: String,
        size: u64,
    },
    /// Already there with the same hash.
    Kept {
        path: String,
        size: u64,
    },
}

/// Downloads `m`'s files into `dest`, each to a temporary name first,
/// checked against its hash, then renamed into place; a file already
/// present with the same hash is not downloaded. `progress` hears each
/// file's size when it is done.
///
/// # Errors
/// A file that cannot be fetched, fails its hash or cannot be written.
pub async fn pull(
    artifacts: &dyn ArtifactStore,
    job: &JobId,
    m: &Manifest,
    dest: &Path,
    progress: &mut (dyn FnMut(&Pulled) + Send),
) -> Result<Vec<Pulled>, String> {
    let mut out = Vec::new();
    for f in &m.files {
        let target = dest.join(&f.path);
        // Never through a link already in the destination.
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let present = std::fs::symlink_metadata(&target)
            .is_ok_and(|m| m.file_type().is_file() && m.len() == f.size)
            && hash_file(&target).is_ok_and(|(sha, _)| sha == f.sha256);
        let done = if present {
            Pulled::Kept {
                path: f.path.clone(),
                size: f.size,
            }
        } else {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = target.with_file_name(format!(".{name}.studio-part"));
            artifacts
                .get_blob(job, &f.sha256, &tmp)
                .await
                .map_err(|e| format!("{}: {e}", f.path))?;
            let t = tmp.clone();
            let got = tokio::task::spawn_blocking(move || hash_file(&t))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", f.path))?;
            if got.0 != f.sha256 {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!(
                    "{}: downloaded content has sha256 {}, the manifest says {}",
                    f.path, got.0, f.sha256
                ));
            }
            if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&target);
            }
            std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
            Pulled::Wrote {
                path: f.path.clone(),
                size: f.size,
            }
        };
        progress(&done);
        out.push(done);
    }
    Ok(out)
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
        let (files, missing) = gather(&out, &ws, &named);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["model.bin", "results/r.csv", "runs/a/log.txt"]);
        // STUDIO_OUTPUT_DIR's model.bin wins over the workspace's.
        assert_eq!(files["model.bin"], out.join("model.bin"));
        assert_eq!(missing, ["root/etc/passwd", "nope.txt"]);
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
