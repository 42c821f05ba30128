//! Workspaces: the script's directory as a reproducible `.tar.gz`.
//!
//! Entries are sorted and carry no owner or time, so the same files always
//! give the same bytes and the same SHA-256: the artifact store keeps one copy.

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::fs;
use std::path::Path;
use thiserror::Error;

/// Names never packed: caches, virtualenvs, VCS metadata.
pub const EXCLUDED: &[&str] = &[
    ".git",
    ".hg",
    "__pycache__",
    ".venv",
    "venv",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".ipynb_checkpoints",
];

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error("workspace {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "workspace is {bytes} bytes, more than the {limit} allowed: move data to object storage"
    )]
    TooLarge { bytes: u64, limit: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Packs `dir` (regular files, recursively; symlinks and [`EXCLUDED`] names skipped).
///
/// # Errors
/// I/O errors, or [`WorkspaceError::TooLarge`] past `limit` bytes of file content.
pub fn pack_dir(dir: &Path, limit: u64) -> Result<Vec<u8>, WorkspaceError> {
    pack_dir_except(dir, limit, &[])
}

/// [`pack_dir`], leaving out the directories `skip` (absolute paths; those
/// not under `dir` change nothing): Studio's own home when it lies inside
/// the script's directory.
///
/// # Errors
/// As [`pack_dir`].
pub fn pack_dir_except(dir: &Path, limit: u64, skip: &[&Path]) -> Result<Vec<u8>, WorkspaceError> {
    let skip: Vec<std::path::PathBuf> = skip
        .iter()
        .filter_map(|s| s.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect();
    let mut files = Vec::new();
    collect(dir, Path::new(""), &skip, &mut files)?;
    files.sort();
    let total: u64 = files.iter().map(|(_, len, _)| *len).sum();
    if total > limit {
        return Err(WorkspaceError::TooLarge {
            bytes: total,
            limit,
        });
    }
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (rel, _, mode) in &files {
        let full = dir.join(rel);
        let data = fs::read(&full).map_err(io(&full))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, rel, data.as_slice())
            .map_err(io(&full))?;
    }
    let gz = builder.into_inner().map_err(io(dir))?;
    gz.finish().map_err(io(dir))
}

fn collect(
    root: &Path,
    rel: &Path,
    skip: &[std::path::PathBuf],
    out: &mut Vec<(std::path::PathBuf, u64, u32)>,
) -> Result<(), WorkspaceError> {
    let here = root.join(rel);
    for entry in fs::read_dir(&here).map_err(io(&here))? {
        let entry = entry.map_err(io(&here))?;
        let name = entry.file_name();
        if EXCLUDED.iter().any(|x| name == *x) {
            continue;
        }
        let meta = entry.metadata().map_err(io(&entry.path()))?;
        let child = rel.join(&name);
        if skip.contains(&child) {
            continue;
        }
        if meta.is_dir() {
            collect(root, &child, skip, out)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            out.push((child, meta.len(), meta.permissions().mode()));
        }
    }
    Ok(())
}

/// Unpacks a workspace into `dest` (created if missing). Entries that would
/// land outside `dest` are refused by the `tar` crate.
///
/// # Errors
/// I/O errors or a corrupt archive.
pub fn unpack(tarball: &[u8], dest: &Path) -> Result<(), WorkspaceError> {
    fs::create_dir_all(dest).map_err(io(dest))?;
    tar::Archive::new(GzDecoder::new(tarball))
        .unpack(dest)
        .map_err(io(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_reproducible_skips_caches_and_round_trips() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("train.py"), "print('hi')\n").unwrap();
        fs::create_dir_all(src.path().join("data/sub")).unwrap();
        fs::write(src.path().join("data/sub/x.txt"), "x").unwrap();
        fs::create_dir_all(src.path().join("__pycache__")).unwrap();
        fs::write(src.path().join("__pycache__/t.pyc"), "junk").unwrap();
        let a = pack_dir(src.path(), 1 << 20).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(src.path().join("train.py"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let b = pack_dir(src.path(), 1 << 20).unwrap();
        assert_eq!(a, b, "same content, same bytes");

        let dst = tempfile::tempdir().unwrap();
        unpack(&a, dst.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join("train.py")).unwrap(),
            "print('hi')\n"
        );
        assert_eq!(
            fs::read_to_string(dst.path().join("data/sub/x.txt")).unwrap(),
            "x"
        );
        assert!(!dst.path().join("__pycache__").exists());
    }

    #[test]
    fn a_skipped_directory_is_left_out() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("train.py"), "print('hi')\n").unwrap();
        let before = pack_dir(src.path(), 1 << 20).unwrap();
        fs::create_dir_all(src.path().join(".studio/jobs")).unwrap();
        fs::write(src.path().join(".studio/studio.sqlite3"), "db").unwrap();
        let home = src.path().join(".studio");
        let elsewhere = Path::new("/somewhere/else");
        let after = pack_dir_except(src.path(), 1 << 20, &[&home, elsewhere]).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn too_large_is_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("big.bin"), vec![0u8; 2048]).unwrap();
        assert!(matches!(
            pack_dir(src.path(), 1024),
            Err(WorkspaceError::TooLarge {
                bytes: 2048,
                limit: 1024
            })
        ));
    }
}
