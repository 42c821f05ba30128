//! Workspaces: the script's directory as a reproducible `.tar.gz`.
//!
//! What is packed: every regular file under the directory except
//! [`EXCLUDED`] names, symlinks, and what the directory's ignore files say.
//! A `.studioignore` (gitignore syntax; one in a subdirectory applies below
//! it) decides when the directory has one at its top, as `.skyignore` does
//! for SkyPilot and `.gcloudignore` for gcloud; otherwise the `.gitignore`
//! files do (with or without a git repository). Ignore files above the
//! directory, git's global excludes and `.git/info/exclude` do not count:
//! the workspace is the directory, wherever it is cloned.
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
        "workspace is {} MiB, more than the {} MiB allowed; the largest files: {}. List what the job does not need in {ignore_file} (gitignore syntax), or move data to object storage",
        bytes / (1 << 20),
        limit / (1 << 20),
        largest.iter().map(|(p, n)| format!("{p} ({})", human(*n))).collect::<Vec<_>>().join(", ")
    )]
    TooLarge {
        bytes: u64,
        limit: u64,
        /// The biggest files packed, largest first (at most 5).
        largest: Vec<(String, u64)>,
        /// `.studioignore`, or the `.gitignore` that was used instead.
        ignore_file: &'static str,
    },
    /// A tarball Studio did not pack, or one tampered with.
    #[error("workspace tarball refused: {0}")]
    Unsafe(String),
}

/// A file size as people read it: `239 MiB`, `12 KiB`, `9 bytes`.
fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
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
    let studioignore = dir.join(".studioignore").is_file();
    let mut files = collect(dir, &skip, studioignore)?;
    files.sort();
    let total: u64 = files.iter().map(|(_, len, _)| *len).sum();
    if total > limit {
        let mut largest: Vec<(String, u64)> = files
            .iter()
            .map(|(p, n, _)| (p.display().to_string(), *n))
            .collect();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        largest.truncate(5);
        return Err(WorkspaceError::TooLarge {
            bytes: total,
            limit,
            largest,
            ignore_file: if studioignore || !dir.join(".gitignore").is_file() {
                ".studioignore"
            } else {
                ".gitignore (or a .studioignore, which replaces it)"
            },
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

type Files = Vec<(std::path::PathBuf, u64, u32)>;

/// The files to pack, relative to `root`.
fn collect(
    root: &Path,
    skip: &[std::path::PathBuf],
    studioignore: bool,
) -> Result<Files, WorkspaceError> {
    let mut walk = ignore::WalkBuilder::new(root);
    walk.standard_filters(false).follow_links(false);
    if studioignore {
        walk.add_custom_ignore_filename(".studioignore");
    } else {
        walk.git_ignore(true).require_git(false);
    }
    let root_owned = root.to_path_buf();
    let skip = skip.to_vec();
    walk.filter_entry(move |e| {
        if EXCLUDED.iter().any(|x| e.file_name() == *x) {
            return false;
        }
        e.path()
            .strip_prefix(&root_owned)
            .map_or(true, |rel| !skip.iter().any(|s| s == rel))
    });
    let mut out = Vec::new();
    for entry in walk.build() {
        let entry = entry.map_err(|e| WorkspaceError::Io {
            path: root.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if !ft.is_file() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| WorkspaceError::Io {
            path: entry.path().display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("the walk stays under its root")
            .to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        out.push((rel, meta.len(), meta.permissions().mode()));
    }
    Ok(out)
}

/// Unpacks a workspace into `dest` (created if missing). Entries that would
/// land outside `dest` are refused by the `tar` crate.
///
/// # Errors
/// I/O errors or a corrupt archive.
pub fn unpack(tarball: &[u8], dest: &Path) -> Result<(), WorkspaceError> {
    unpack_limited(tarball, dest, UNPACK_LIMIT, UNPACK_ENTRIES)
}

/// Most bytes [`unpack`] writes: above the largest checkpoint (2 GiB) and
/// workspace (256 MiB) Studio packs; a tarball that expands past it (a
/// "tarball bomb") is refused.
pub const UNPACK_LIMIT: u64 = 3 << 30;
/// Most entries [`unpack`] takes.
pub const UNPACK_ENTRIES: u64 = 200_000;

/// [`unpack`] with other limits. Only what Studio packs is taken: regular
/// files and directories at relative paths that stay inside `dest`. A
/// symlink, hard link, device or FIFO, an absolute path or one with `..`,
/// more than `max_entries` entries or `max_bytes` bytes, each refuses the
/// tarball with its name (what came before it stays in `dest`, nowhere else).
///
/// # Errors
/// [`WorkspaceError::Unsafe`] as above; I/O and corrupt data.
pub fn unpack_limited(
    tarball: &[u8],
    dest: &Path,
    max_bytes: u64,
    max_entries: u64,
) -> Result<(), WorkspaceError> {
    use std::path::Component;
    use tar::EntryType;
    fs::create_dir_all(dest).map_err(io(dest))?;
    let mut archive = tar::Archive::new(GzDecoder::new(tarball));
    let (mut bytes, mut count) = (0u64, 0u64);
    for entry in archive.entries().map_err(io(dest))? {
        let mut entry = entry.map_err(io(dest))?;
        count += 1;
        if count > max_entries {
            return Err(WorkspaceError::Unsafe(format!(
                "it holds more than {max_entries} entries"
            )));
        }
        let path = entry.path().map_err(io(dest))?.into_owned();
        let shown = path.display().to_string();
        let inside = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            && path.components().any(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(WorkspaceError::Unsafe(format!(
                "entry '{shown}' would be written outside the workspace"
            )));
        }
        match entry.header().entry_type() {
            EntryType::Regular => {
                bytes = bytes.saturating_add(entry.header().size().map_err(io(dest))?);
                if bytes > max_bytes {
                    return Err(WorkspaceError::Unsafe(format!(
                        "it expands to more than {} MiB (at '{shown}')",
                        max_bytes >> 20
                    )));
                }
            }
            EntryType::Directory => {}
            other => {
                return Err(WorkspaceError::Unsafe(format!(
                    "entry '{shown}' is a {} (only files and directories are taken)",
                    match other {
                        EntryType::Symlink => "symbolic link",
                        EntryType::Link => "hard link",
                        EntryType::Char | EntryType::Block => "device",
                        EntryType::Fifo => "FIFO",
                        _ => "special entry",
                    }
                )));
            }
        }
        entry.unpack_in(dest).map_err(io(dest))?;
    }
    Ok(())
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
    fn too_large_names_the_largest_files_and_the_ignore_file() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("big.bin"), vec![0u8; 3 << 20]).unwrap();
        fs::create_dir_all(src.path().join("data")).unwrap();
        fs::write(src.path().join("data/medium.npy"), vec![0u8; 2 << 20]).unwrap();
        fs::write(src.path().join("train.py"), "x").unwrap();
        let err = pack_dir(src.path(), 1 << 20).unwrap_err();
        match &err {
            WorkspaceError::TooLarge {
                bytes,
                largest,
                ignore_file,
                ..
            } => {
                assert_eq!(*bytes, (5 << 20) + 1);
                assert_eq!(largest[0].0, "big.bin");
                assert_eq!(largest[1].0, "data/medium.npy");
                assert_eq!(*ignore_file, ".studioignore");
            }
            other => panic!("{other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("big.bin (3 MiB), data/medium.npy (2 MiB), train.py (1 bytes)"),
            "{text}"
        );
        assert!(text.contains(".studioignore (gitignore syntax)"), "{text}");
        // With a .gitignore in use, the message says how to take over.
        fs::write(src.path().join(".gitignore"), "*.tmp\n").unwrap();
        let text = pack_dir(src.path(), 1 << 20).unwrap_err().to_string();
        assert!(
            text.contains("in .gitignore (or a .studioignore, which replaces it)"),
            "{text}"
        );
    }

    fn packed(dir: &Path) -> Vec<String> {
        let out = tempfile::tempdir().unwrap();
        unpack(&pack_dir(dir, 1 << 20).unwrap(), out.path()).unwrap();
        let mut names: Vec<String> = ignore::WalkBuilder::new(out.path())
            .standard_filters(false)
            .build()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
            .map(|e| {
                e.path()
                    .strip_prefix(out.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn gitignore_is_honoured_without_a_repository() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join(".gitignore"), "*.ckpt\n/data/\n").unwrap();
        fs::write(src.path().join("train.py"), "x").unwrap();
        fs::write(src.path().join("model.ckpt"), "x").unwrap();
        fs::create_dir_all(src.path().join("data")).unwrap();
        fs::write(src.path().join("data/big.bin"), "x").unwrap();
        fs::create_dir_all(src.path().join("lib/data")).unwrap();
        fs::write(src.path().join("lib/data/table.csv"), "x").unwrap();
        assert_eq!(
            packed(src.path()),
            [".gitignore", "lib/data/table.csv", "train.py"],
            "/data/ is anchored: lib/data stays"
        );
    }

    #[test]
    fn a_studioignore_replaces_the_gitignore_and_nests() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join(".gitignore"), "notes.txt\n").unwrap();
        fs::write(src.path().join(".studioignore"), "data/*\n!data/keep.txt\n").unwrap();
        fs::write(src.path().join("notes.txt"), "x").unwrap();
        fs::create_dir_all(src.path().join("data")).unwrap();
        fs::write(src.path().join("data/big.bin"), "x").unwrap();
        fs::write(src.path().join("data/keep.txt"), "x").unwrap();
        fs::create_dir_all(src.path().join("sub")).unwrap();
        fs::write(src.path().join("sub/.studioignore"), "*.log\n").unwrap();
        fs::write(src.path().join("sub/run.log"), "x").unwrap();
        fs::write(src.path().join("run.log"), "x").unwrap();
        assert_eq!(
            packed(src.path()),
            [
                ".gitignore",
                ".studioignore",
                "data/keep.txt",
                "notes.txt",
                "run.log",
                "sub/.studioignore"
            ]
        );
    }
}
