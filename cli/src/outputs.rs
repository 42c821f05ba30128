//! Bringing an attempt's outputs home: `studio pull` and a waiting
//! `studio run` both download through [`pull_outputs`].
//!
//! The destination is written without following any symbolic link inside
//! it: whoever can write in `DEST` (or made it) could point `DEST/sub` at
//! another place, and a pull of `sub/x` would then write there. `DEST`
//! itself is opened as the user named it (a link the user gave is their
//! choice); below it every directory is opened with `O_NOFOLLOW` relative
//! to the one above (`openat`, `mkdirat`), a link met on the way refuses
//! the pull before anything is downloaded, and each file is created under
//! a temporary name with `O_CREAT | O_EXCL | O_NOFOLLOW` in the directory
//! held open, filled, checked, then renamed into place there (`renameat`,
//! which replaces a link at the file's own name instead of writing through
//! it).

use crate::backend::Side;
use crate::error::{usage, CliError};
use anyhow::Context as _;
use sha2::Digest as _;
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read as _, Seek as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Component, Path, PathBuf};
use studio_core::ids::JobId;
use studio_core::job::Job;
use studio_core::outputs::{Manifest, OutputFile};
use studio_core::outputs_store::Pulled;
use studio_core::ports::ArtifactStore;

/// Downloads an attempt's outputs into `dest` (checked, unchanged files
/// kept), with a progress line on a terminal, and says what it wrote: each
/// file on stdout when `list` (`studio pull`), else only the summary (a
/// waiting `run`, whose stdout is the script's).
pub(crate) async fn pull_outputs(
    side: &Side,
    job: &Job,
    attempt: Option<u32>,
    dest: &Path,
    list: bool,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let chosen = match attempt {
        Some(n) => {
            let Some(a) = job.attempts.iter().find(|a| a.number == n) else {
                return Err(usage(format!("job {} has no attempt {n}", job.id)));
            };
            match &a.outputs {
                Some(o) => (n, o.clone()),
                None => {
                    return Err(usage(format!(
                        "attempt {n} of job {} left no outputs{}",
                        job.id,
                        if a.script_ended_at.is_none() { " (yet)" } else { "" }
                    )))
                }
            }
        }
        None => match job.attempts.iter().rev().find_map(|a| a.outputs.clone().map(|o| (a.number, o))) {
            Some(c) => c,
            None => {
                return Err(usage(format!(
                    "job {} has no outputs{}: a script writes them to $STUDIO_OUTPUT_DIR (or names them with --output)",
                    job.id,
                    if job.state.is_terminal() { "" } else { " yet" }
                )))
            }
        },
    };
    let (n, r) = chosen;
    // The manifest passes through a directory of this user's alone (a
    // fixed name in the shared temporary directory could be another
    // user's link).
    let scratch = Scratch::new().context("creating a private temporary directory")?;
    let m = studio_core::outputs_store::manifest(side.artifacts(), &job.id, &r, &scratch.0).await?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let root = open_dir(dest).with_context(|| format!("opening {}", dest.display()))?;
    // Every file's directory is looked at before anything is written: a
    // link refuses the pull whole.
    for f in &m.files {
        under(root.as_fd(), dest, &f.path, false).map_err(Refused::into_cli)?;
    }
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0u64;
    let mut count = 0usize;
    let files = m.files.len();
    let mut progress = |p: &Pulled| {
        let size = match p {
            Pulled::Wrote { size, .. } | Pulled::Kept { size, .. } => *size,
        };
        done += size;
        count += 1;
        if tty {
            let width = 30usize;
            let filled = (done * width as u64)
                .checked_div(total)
                .unwrap_or(width as u64) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {count}/{files} files, {} of {}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                format_bytes(done),
                format_bytes(total)
            );
        }
    };
    let pulled = pull_into(side.artifacts(), &job.id, &m, &root, dest, &mut progress).await;
    if tty {
        eprintln!();
    }
    let pulled = pulled.map_err(|e| match e {
        Refused::Other(why) => {
            CliError::Other(anyhow::anyhow!("pulling outputs of {}: {why}", job.id))
        }
        dest => dest.into_cli(),
    })?;
    let (mut wrote, mut kept, mut bytes) = (0, 0, 0u64);
    for p in &pulled {
        match p {
            Pulled::Wrote { path, size } => {
                wrote += 1;
                bytes += size;
                if list {
                    println!("{}", dest.join(path).display());
                }
            }
            Pulled::Kept { .. } => kept += 1,
        }
    }
    eprintln!(
        "studio: outputs of job {} attempt {n} in {}: {wrote} written ({}), {kept} already there",
        job.id,
        dest.display(),
        format_bytes(bytes)
    );
    Ok(())
}

/// Bytes for people: `812 B`, `3.4 MiB`, `1.2 GiB`.
pub(crate) fn format_bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
    }
}

/// Where `studio run` and `studio pull` put outputs, under the current directory.
pub(crate) const PULL_DIR: &str = "studio-out";

/// Why a pull stopped: the destination's shape (a link, or a file where
/// a directory goes: the user's to change), or anything else.
#[derive(Debug)]
enum Refused {
    Dest(String),
    Other(String),
}

impl Refused {
    fn into_cli(self) -> CliError {
        match self {
            Refused::Dest(why) => usage(why),
            Refused::Other(why) => CliError::Other(anyhow::anyhow!(why)),
        }
    }
}

/// Downloads `m`'s files under `root` (the destination `dest`, held
/// open): each to a temporary name, checked against its hash, then renamed
/// into place; a file already there with the right hash is not downloaded.
async fn pull_into(
    artifacts: &dyn ArtifactStore,
    job: &JobId,
    m: &Manifest,
    root: &OwnedFd,
    dest: &Path,
    progress: &mut (dyn FnMut(&Pulled) + Send),
) -> Result<Vec<Pulled>, Refused> {
    let mut out = Vec::new();
    for f in &m.files {
        let dir = under(root.as_fd(), dest, &f.path, true)?.expect("created when missing");
        let name = Path::new(&f.path)
            .file_name()
            .ok_or_else(|| Refused::Other(format!("{}: not a file name", f.path)))?;
        let done = if present(dir.as_fd(), name, f) {
            Pulled::Kept {
                path: f.path.clone(),
                size: f.size,
            }
        } else {
            fetch(artifacts, job, f, &dir, name)
                .await
                .map_err(Refused::Other)?;
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

/// Fetches `f` into the directory `dir` as `name`, through a temporary
/// file this call creates (`O_EXCL`: never one that was there, never
/// through a link), checked against its hash, then renamed into place.
async fn fetch(
    artifacts: &dyn ArtifactStore,
    job: &JobId,
    f: &OutputFile,
    dir: &OwnedFd,
    name: &OsStr,
) -> Result<(), String> {
    let fail = |e: io::Error| format!("{}: {e}", f.path);
    let target = c_name(name).map_err(fail)?;
    let mut part = b".".to_vec();
    part.extend_from_slice(name.as_bytes());
    part.extend_from_slice(b".studio-part");
    let tmp = CString::new(part).map_err(|_| fail(io::ErrorKind::InvalidInput.into()))?;
    // What an earlier pull broke off left (the entry itself, never what it
    // points at).
    match unlinkat(dir.as_fd(), &tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let fd = openat(
        dir.as_fd(),
        &tmp,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o666,
    )
    .map_err(fail)?;
    let mut file = std::fs::File::from(fd);
    // The mode a new file gets here (the umask's), whatever mode a store
    // gives the file it writes.
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        file.metadata().map_err(fail)?.permissions().mode() & 0o777
    };
    let filled = async {
        // The store writes by path; this one names the file just created,
        // whatever happens to the names around it meanwhile.
        artifacts
            .get_blob(job, &f.sha256, &fd_path(&file))
            .await
            .map_err(|e| format!("{}: {e}", f.path))?;
        let got = tokio::task::spawn_blocking(move || {
            file.rewind()?;
            let got = hash_of(&mut file)?;
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok::<_, io::Error>(got)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(fail)?;
        if got != f.sha256 {
            return Err(format!(
                "{}: downloaded content has sha256 {got}, the manifest says {}",
                f.path, f.sha256
            ));
        }
        renameat(dir.as_fd(), &tmp, &target).map_err(fail)
    }
    .await;
    if filled.is_err() {
        let _ = unlinkat(dir.as_fd(), &tmp);
    }
    filled
}

/// Whether `name` in `dir` is a regular file (not a link) with `f`'s size
/// and hash.
fn present(dir: BorrowedFd<'_>, name: &OsStr, f: &OutputFile) -> bool {
    let Ok(c) = c_name(name) else { return false };
    // Non-blocking: a FIFO there must not hang the pull.
    let Ok(fd) = openat(
        dir,
        &c,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    ) else {
        return false;
    };
    let mut file = std::fs::File::from(fd);
    file.metadata()
        .is_ok_and(|m| m.file_type().is_file() && m.len() == f.size)
        && hash_of(&mut file).is_ok_and(|sha| sha == f.sha256)
}

/// The directory of output `rel` under `root` (the destination, shown as
/// `dest`), opened one entry at a time without following links; made
/// where missing when `create`, else `None` where a directory is missing
/// (it will be made, so nothing below it can be a link).
///
/// # Errors
/// The entry that is a link, or not a directory ([`Refused::Dest`]), or
/// cannot be opened.
fn under(
    root: BorrowedFd<'_>,
    dest: &Path,
    rel: &str,
    create: bool,
) -> Result<Option<OwnedFd>, Refused> {
    let mut shown = dest.to_path_buf();
    let mut cur = root
        .try_clone_to_owned()
        .map_err(|e| Refused::Other(format!("{}: {e}", dest.display())))?;
    let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        let Component::Normal(name) = c else {
            return Err(Refused::Other(format!(
                "output {rel:?} is not a relative path"
            )));
        };
        shown.push(name);
        match subdir(cur.as_fd(), name, create) {
            Ok(Some(fd)) => cur = fd,
            Ok(None) => return Ok(None),
            Err(Entry::Link) => {
                return Err(Refused::Dest(format!(
                    "{} is a symbolic link; studio pull does not write through links (remove it, or pull into another directory)",
                    shown.display()
                )))
            }
            Err(Entry::NotDir) => {
                return Err(Refused::Dest(format!(
                    "{} is not a directory, and output {rel} goes under it",
                    shown.display()
                )))
            }
            Err(Entry::Io(e)) => {
                return Err(Refused::Other(format!("{}: {e}", shown.display())))
            }
        }
    }
    Ok(Some(cur))
}

/// What stopped [`subdir`].
enum Entry {
    Link,
    NotDir,
    Io(io::Error),
}

/// The directory `name` in `dir`, never through a link; made (as `mkdir`
/// does, with the umask) when missing and `create`.
fn subdir(dir: BorrowedFd<'_>, name: &OsStr, create: bool) -> Result<Option<OwnedFd>, Entry> {
    let c = c_name(name).map_err(Entry::Io)?;
    // Twice at most: once more after making it (or finding it just made).
    for _ in 0..2 {
        match openat(
            dir,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                // SAFETY: mkdirat with a NUL-terminated name in a directory we hold open.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(Entry::Io(e));
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(if is_link(dir, &c) {
                    Entry::Link
                } else {
                    Entry::NotDir
                });
            }
            Err(e) => return Err(Entry::Io(e)),
        }
    }
    Err(Entry::Io(io::Error::other("it keeps changing")))
}

/// Whether `name` in `dir` is a symbolic link (not followed).
fn is_link(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat of a NUL-terminated name into a stat buffer of ours.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    // SAFETY: fstatat filled the buffer when it returned 0.
    r == 0 && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFLNK
}

/// The destination as the user named it (following a link they gave).
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)?;
    Ok(f.into())
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: openat with a NUL-terminated name in a directory we hold open.
    let raw = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: unlinkat of a NUL-terminated name in a directory we hold open.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    let d = dir.as_raw_fd();
    // SAFETY: renameat of two NUL-terminated names within a directory we hold open.
    if unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path that opens the very file `f` is (the stores take paths).
fn fd_path(f: &std::fs::File) -> PathBuf {
    let base = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    PathBuf::from(format!("{base}/{}", f.as_raw_fd()))
}

fn hash_of(f: &mut std::fs::File) -> io::Result<String> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A directory of this user's alone (`mkdtemp`: `0700`, a name nobody
/// could guess), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> io::Result<Scratch> {
        let mut template = std::env::temp_dir()
            .join("studio-pull-XXXXXX")
            .into_os_string()
            .into_vec();
        template.push(0);
        // SAFETY: mkdtemp rewrites the X's of a NUL-terminated buffer we own.
        if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        Ok(Scratch(PathBuf::from(std::ffi::OsString::from_vec(
            template,
        ))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
