//! The job's files as the worker (root, on a cloud machine) touches them:
//! through descriptors, one path component at a time, never through a link.
//!
//! A script owns its attempt directory and may replace anything in it with a
//! link (`rmdir $STUDIO_OUTPUT_DIR && ln -s / $STUDIO_OUTPUT_DIR`), or swap a
//! file for one while the worker reads its checkpoint. `O_NOFOLLOW` on a
//! path guards only its last component, so every walk here starts from a
//! directory opened with `O_NOFOLLOW | O_DIRECTORY` whose parents are the
//! worker's own, and goes on with `openat`/`fstatat` relative to it: a link
//! met anywhere is skipped, a directory swapped for one mid-walk fails to
//! open, and a FIFO or device is never opened for reading (`O_NONBLOCK`,
//! then checked to be a regular file). Where scripts run as another user,
//! only files that user owns are taken: a hard link to a file of root's is
//! not the job's.

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Where one attempt's files live on this machine: under the work root,
/// `JOB/attempt-N/{workspace,checkpoints,outputs}`, the job user's; and
/// `JOB/scratch-N`, the worker's own (manifests on their way to the store),
/// which no script can reach or replace.
pub(crate) struct AttemptDirs {
    pub(crate) job: PathBuf,
    pub(crate) attempt: PathBuf,
    pub(crate) scratch: PathBuf,
    pub(crate) workspace: PathBuf,
    pub(crate) checkpoints: PathBuf,
    pub(crate) outputs: PathBuf,
}

impl AttemptDirs {
    pub(crate) fn new(work_root: &Path, id: &crate::ids::JobId, attempt: u32) -> AttemptDirs {
        let job = work_root.join(id.as_str());
        let dir = job.join(format!("attempt-{attempt}"));
        AttemptDirs {
            scratch: job.join(format!("scratch-{attempt}")),
            job,
            workspace: dir.join("workspace"),
            checkpoints: dir.join("checkpoints"),
            outputs: dir.join("outputs"),
            attempt: dir,
        }
    }
}

/// A directory held open; everything under it is reached through it.
pub(crate) struct Dir {
    fd: OwnedFd,
}

/// What a walk found: a regular file's path below the walked directory,
/// its size, mode and modification time (ns).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) rel: String,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) mtime_ns: i128,
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

fn open_at(at: i32, name: &OsStr, flags: i32) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: openat with a NUL-terminated name; the descriptor is ours.
    let raw = unsafe { libc::openat(at, c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn fstat(fd: i32) -> std::io::Result<libc::stat> {
    // SAFETY: fstat into a struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn is(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

impl Dir {
    /// Opens the directory at `path`, not following it if it is a link.
    /// Its parents are trusted: they must be the worker's own.
    ///
    /// # Errors
    /// It is missing, a link, or not a directory.
    pub(crate) fn open(path: &Path) -> std::io::Result<Dir> {
        let fd = open_at(
            libc::AT_FDCWD,
            path.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        Ok(Dir { fd })
    }

    /// The directory `rel` below this one (relative, no `..`), every
    /// component opened without following a link.
    ///
    /// # Errors
    /// A component is missing, a link, or not a directory.
    pub(crate) fn sub(&self, rel: &Path) -> std::io::Result<Dir> {
        let mut at = Dir {
            fd: self.fd.try_clone()?,
        };
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(std::io::ErrorKind::InvalidInput.into());
            };
            at = Dir {
                fd: open_at(at.fd.as_raw_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY)?,
            };
        }
        Ok(at)
    }

    /// Opens the regular file `rel` below this directory for reading, if
    /// it is one (owned by `owner`, when given).
    ///
    /// # Errors
    /// Missing, reached through a link, not a regular file, or not the owner's.
    pub(crate) fn open_file(
        &self,
        rel: &Path,
        owner: Option<u32>,
    ) -> std::io::Result<(std::fs::File, libc::stat)> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
        let dir = self.sub(parent)?;
        // Non-blocking: opening a FIFO for reading would wait for a writer.
        let fd = open_at(
            dir.fd.as_raw_fd(),
            name,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        if !is(&st, libc::S_IFREG) {
            return Err(std::io::Error::other("not a regular file"));
        }
        if owner.is_some_and(|o| st.st_uid != o) {
            return Err(std::io::Error::other("not the job's own file"));
        }
        Ok((std::fs::File::from(fd), st))
    }

    /// At most `limit` bytes of the regular file `rel` (see [`Dir::open_file`]).
    ///
    /// # Errors
    /// As [`Dir::open_file`], or larger than `limit`.
    pub(crate) fn read(
        &self,
        rel: &Path,
        owner: Option<u32>,
        limit: u64,
    ) -> std::io::Result<Vec<u8>> {
        let (f, st) = self.open_file(rel, owner)?;
        if st.st_size as u64 > limit {
            return Err(std::io::Error::other(format!("over {limit} bytes")));
        }
        let mut bytes = Vec::new();
        f.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(std::io::Error::other(format!("over {limit} bytes")));
        }
        Ok(bytes)
    }

    /// The names in this directory, with what `fstatat` (not following
    /// links) says of each.
    fn entries(&self) -> std::io::Result<Vec<(OsString, libc::stat)>> {
        let dup = self.fd.try_clone()?;
        // SAFETY: fdopendir takes over a descriptor we own (released below
        // only on success); closedir closes it.
        let d = unsafe { libc::fdopendir(dup.as_raw_fd()) };
        if d.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        std::mem::forget(dup);
        let mut names = Vec::new();
        loop {
            // SAFETY: readdir on a stream we opened; the entry is copied out
            // before the next call.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                names.push(OsString::from_vec(bytes.to_vec()));
            }
        }
        // SAFETY: closes the stream (and the descriptor it took).
        unsafe { libc::closedir(d) };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Ok(st) = self.stat(&n) {
                out.push((n, st));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn stat(&self, name: &OsStr) -> std::io::Result<libc::stat> {
        let c = cstr(name)?;
        // SAFETY: fstatat into a struct we own, on a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st)
    }

    /// Every regular file below this directory (owned by `owner`, when
    /// given), sorted by path; links, FIFOs, sockets and devices are left
    /// out, and so is a directory that stops being one mid-walk.
    pub(crate) fn files(&self, owner: Option<u32>) -> Vec<Entry> {
        let mut out = Vec::new();
        self.walk("", owner, &mut out, 0);
        out
    }

    fn walk(&self, prefix: &str, owner: Option<u32>, out: &mut Vec<Entry>, depth: u32) {
        // Deeper than any real tree; a job's maze ends here.
        if depth > 64 {
            return;
        }
        let Ok(entries) = self.entries() else {
            return;
        };
        for (name, st) in entries {
            let rel = if prefix.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", name.to_string_lossy())
            };
            if owner.is_some_and(|o| st.st_uid != o) {
                continue;
            }
            if is(&st, libc::S_IFDIR) {
                if let Ok(sub) = self.sub(Path::new(&name)) {
                    sub.walk(&rel, owner, out, depth + 1);
                }
            } else if is(&st, libc::S_IFREG) {
                out.push(Entry {
                    rel,
                    size: st.st_size as u64,
                    #[allow(clippy::unnecessary_cast)] // u16 on some systems
                    mode: st.st_mode as u32,
                    mtime_ns: i128::from(st.st_mtime) * 1_000_000_000
                        + i128::from(st.st_mtime_nsec),
                });
            }
        }
    }

    /// Gives everything below this directory, then the directory itself,
    /// to `uid:gid` (links themselves, never what they name), and sets
    /// `mode(is_dir, old_mode)` on each directory and file. Only safe while
    /// no process of the tree's previous owner runs.
    ///
    /// # Errors
    /// The first entry that could not be changed.
    pub(crate) fn give(
        &self,
        uid: u32,
        gid: u32,
        mode: &dyn Fn(bool, u32) -> u32,
    ) -> std::io::Result<()> {
        self.give_depth(uid, gid, mode, 0)
    }

    fn give_depth(
        &self,
        uid: u32,
        gid: u32,
        mode: &dyn Fn(bool, u32) -> u32,
        depth: u32,
    ) -> std::io::Result<()> {
        if depth > 256 {
            return Err(std::io::Error::other("directories nested too deep"));
        }
        for (name, st) in self.entries()? {
            let c = cstr(&name)?;
            let fd = self.fd.as_raw_fd();
            if is(&st, libc::S_IFDIR) {
                self.sub(Path::new(&name))?
                    .give_depth(uid, gid, mode, depth + 1)?;
                continue;
            }
            // SAFETY: fchownat of a NUL-terminated name in a directory we
            // hold, not following a link.
            if unsafe { libc::fchownat(fd, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if is(&st, libc::S_IFREG) {
                #[allow(clippy::unnecessary_cast)] // u16 on some systems
                let m = mode(false, st.st_mode as u32 & 0o7777);
                // SAFETY: as above; a regular file (fchmodat follows links,
                // so never on one).
                if unsafe { libc::fchmodat(fd, c.as_ptr(), m as libc::mode_t, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        let st = fstat(self.fd.as_raw_fd())?;
        #[allow(clippy::unnecessary_cast)] // u16 on some systems
        let old = st.st_mode as u32 & 0o7777;
        // SAFETY: fchown/fchmod on a descriptor we own.
        if unsafe { libc::fchown(self.fd.as_raw_fd(), uid, gid) } != 0
            || unsafe { libc::fchmod(self.fd.as_raw_fd(), mode(true, old) as libc::mode_t) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The raw descriptor (for `*at` calls by the caller).
    pub(crate) fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_takes_regular_files_and_follows_no_link() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("out");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(root.join("top"), "yy").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link-file")).unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = Dir::open(&root).unwrap();
        let rels: Vec<String> = dir.files(None).into_iter().map(|e| e.rel).collect();
        assert_eq!(rels, ["a/b/f", "top"]);
        assert_eq!(dir.read(Path::new("a/b/f"), None, 10).unwrap(), b"x");
        assert!(dir.read(Path::new("link-file"), None, 10).is_err());
        assert!(dir.read(Path::new("link-dir/secret"), None, 10).is_err());
        // A FIFO with no writer is refused at once, not waited on.
        assert!(dir.read(Path::new("fifo"), None, 10).is_err());
        assert!(
            dir.read(Path::new("top"), None, 1).is_err(),
            "over the limit"
        );
        // The root itself, replaced by a link, is not opened.
        std::fs::rename(&root, d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &root).unwrap();
        assert!(Dir::open(&root).is_err());
    }
}
