//! Files and directories under `$STUDIO_HOME` are the user's alone: the
//! database holds every job's `--env` values, logs hold whatever scripts
//! print. Directories are created `0700` and files `0600`, whatever the
//! umask of the process that creates them.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory Studio creates under its home.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Studio creates under its home.
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with mode `0700` for the directories it creates.
///
/// # Errors
/// I/O errors.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Sets `0700` on an existing directory (a home made by an older version).
///
/// # Errors
/// I/O errors.
pub fn restrict_dir(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Sets `0600` on a file if it exists.
///
/// # Errors
/// I/O errors other than the file not existing.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Open options that create files with mode `0600`.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Opens `path` for appending, creating it `0600`.
///
/// # Errors
/// I/O errors.
pub fn append(path: &Path) -> io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Writes `bytes` to `path` (created `0600`, truncated).
///
/// # Errors
/// I/O errors.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)
}
