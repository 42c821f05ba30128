//! Outputs moved through an [`ArtifactStore`]: an attempt's files uploaded
//! by content with their [`Manifest`] ([`upload`]), a manifest read back
//! and checked ([`manifest`]), and its files pulled home ([`pull`]), each
//! checked against its hash; a file already present with the right hash
//! is skipped.

use crate::ids::JobId;
use crate::outputs::{hash_file, safe_rel, Manifest, OutputFile, OutputsRef, MANIFEST_VERSION};
use crate::ports::{ArtifactStore, PortError};
use sha2::Digest;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

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
