//! The job's Python environment, the same on every backend: built with
//! [uv](https://docs.astral.sh/uv/) from the workspace's dependency files
//! (`uv.lock` with `pyproject.toml`, else `requirements.txt`, else
//! `pyproject.toml`), in the Python the job asks for (`python`: a version
//! uv finds on the machine or fetches, or an interpreter's path). A job with
//! neither runs with the machine's interpreter as it is, and needs no uv.
//!
//! **As the job's user.** Where scripts run as an unprivileged user
//! ([`WorkerConfig::job_users`]: a uid per attempt), every build step runs
//! as the attempt's user too, with
//! an environment of uv's settings only ([`WorkerConfig::uv_env`]): a
//! `requirements.txt` naming a local package runs that package's build
//! backend unprivileged, never as the worker. The worker itself only makes
//! the owner's directory (in a root-owned parent) and renames a finished
//! build into place, both through a descriptor it opened without following
//! links, so nothing the job left there is ever followed as root.
//!
//! A finished build is sealed before it is used: every process of the
//! user who built it killed, then the tree made root's and read-only
//! (links left as links, never followed). The owner's directory is handed
//! to each attempt's user, private, so no other owner's job can enter it;
//! an owner's job may still remove or replace that owner's environments
//! and uv cache (it owns the directory), which changes only that owner's
//! later jobs on this machine.
//!
//! **Cached per owner.** `<env_root>/<owner>/<key>`, where the key hashes
//! the dependency files, the Python asked for and the platform; uv's own
//! cache (`<env_root>/<owner>/.cache`) makes a changed file reuse what it
//! can. One owner's builds never change what another's jobs run. A build is
//! made under a temporary name and renamed into place only when it
//! succeeded, so a failed build is never reused; jobs with the same key
//! wait on a lock file and build once.

use crate::ids::JobId;
use crate::ports::ArtifactStore;
use crate::worker::config::WorkerConfig;
use crate::worker::liveness::Seen;
use crate::worker::process::signal_group;
use sha2::Digest;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::process::Command;
use tokio::sync::watch;

/// What a workspace asks of its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deps {
    /// `uv.lock` beside `pyproject.toml`: installed exactly as locked.
    Locked,
    /// `requirements.txt`.
    Requirements,
    /// `pyproject.toml`'s `[project] dependencies`.
    Pyproject,
    /// No dependency file.
    None,
}

impl Deps {
    /// What the workspace at `ws` holds, by the files uv reads.
    pub fn of(ws: &Path) -> Deps {
        // Regular files only: a link is not followed (and not honoured).
        let has =
            |f: &str| std::fs::symlink_metadata(ws.join(f)).is_ok_and(|m| m.file_type().is_file());
        if has("uv.lock") && has("pyproject.toml") {
            Deps::Locked
        } else if has("requirements.txt") {
            Deps::Requirements
        } else if has("pyproject.toml") {
            Deps::Pyproject
        } else {
            Deps::None
        }
    }

    /// The files this kind is built from.
    pub fn files(&self) -> &'static [&'static str] {
        match self {
            Deps::Locked => &["pyproject.toml", "uv.lock"],
            Deps::Requirements => &["requirements.txt"],
            Deps::Pyproject => &["pyproject.toml"],
            Deps::None => &[],
        }
    }
}

/// What a job's environment is built from: read as root before the
/// attempt is handed to the job's user ([`EnvRequest::of`]), so the files
/// hashed are the ones unpacked, never a link the job made since.
#[derive(Debug, Clone)]
pub struct EnvRequest {
    deps: Deps,
    python: Option<String>,
    key: String,
}

/// Largest dependency file read (a `requirements.txt` is a few KiB).
const MAX_DEPS_FILE: u64 = 1 << 20;

impl EnvRequest {
    /// `None`: the job asks for nothing, and runs with the machine's interpreter.
    ///
    /// # Errors
    /// A dependency file that cannot be read, or is too large.
    pub fn of(
        cfg: &WorkerConfig,
        python: Option<&str>,
        ws: &Path,
    ) -> Result<Option<EnvRequest>, String> {
        let deps = Deps::of(ws);
        if deps == Deps::None && python.is_none() {
            return Ok(None);
        }
        let key = key(&deps, python.unwrap_or(&cfg.python), ws)?;
        Ok(Some(EnvRequest {
            deps,
            python: python.map(String::from),
            key,
        }))
    }
}

/// The interpreter the script runs with: the machine's own when the job
/// asks for nothing, else its environment's (built now or found built).
/// A build stops when the job is cancelled or taken over (`seen`).
///
/// # Errors
/// One short line for the job's failure reason: what failed, and why.
pub(crate) async fn python_for(
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    ids: Option<(u32, u32)>,
    job: &crate::job::Job,
    wanted: Option<EnvRequest>,
    ws: &Path,
    seen: watch::Receiver<Seen>,
) -> Result<PathBuf, String> {
    let (id, owner) = (&job.id, job.spec.owner.as_str());
    let Some(EnvRequest { deps, python, key }) = wanted else {
        return Ok(cfg.python.clone().into());
    };
    let python = python.as_deref();
    let what = match (deps.files(), python) {
        ([], Some(p)) => format!("python {p}"),
        (files, None) => files.join(" + "),
        (files, Some(p)) => format!("{}, python {p}", files.join(" + ")),
    };
    let Some(uv) = cfg.uv.clone().or_else(find_uv) else {
        return Err(format!(
            "{what} needs uv to build the job's environment, and this machine has none \
             (install it: `pip install uv`, or point STUDIO_UV at it)"
        ));
    };
    let owner_dir = OwnerDir::open(&cfg.env_root, owner, ids)?;
    let bin = owner_dir.path.join(&key).join("bin").join("python");
    // A hit before the lock costs a stat; after it, a build that ran
    // meanwhile is found instead of made twice.
    let mut lock = None;
    let _lock = loop {
        if owner_dir.holds_dir(&key) {
            let line = format!("[studio] python environment {key} ({what}): reused\n");
            log(artifacts, id, &line).await;
            return Ok(bin);
        }
        match lock {
            Some(l) => break l,
            None => lock = Some(owner_dir.lock(&key).await?),
        }
    };
    log(
        artifacts,
        id,
        &format!("[studio] building the python environment {key} ({what}) with uv\n"),
    )
    .await;
    let started = Instant::now();
    let tmp = format!(".build-{key}-{}", ulid::Ulid::new());
    let build = Build {
        uv: &uv,
        cfg,
        ids,
        owner_dir: &owner_dir,
        tmp: owner_dir.path.join(&tmp),
        ws,
    };
    build.take_cache().await?;
    let result = build.run(&deps, python.unwrap_or(&cfg.python), seen).await;
    log(artifacts, id, &result.output).await;
    match result.failure {
        None => {
            if let Err(e) = build.seal(&tmp).await {
                build.discard().await;
                return Err(e);
            }
            if let Err(e) = owner_dir.rename(&tmp, &key) {
                build.discard().await;
                return Err(e);
            }
            let line = format!(
                "[studio] built the python environment {key} in {:.1}s\n",
                started.elapsed().as_secs_f64()
            );
            log(artifacts, id, &line).await;
            Ok(bin)
        }
        Some(why) => {
            build.discard().await;
            Err(why)
        }
    }
}

/// uv on this machine: on `PATH`, else beside this binary (where cloud
/// machines get it).
pub fn find_uv() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("uv")));
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("uv"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(beside)
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The cache key: the kind, the Python asked for, the platform, and the
/// dependency files' bytes.
fn key(deps: &Deps, python: &str, ws: &Path) -> Result<String, String> {
    let mut h = sha2::Sha256::new();
    h.update(b"studio-env-1\0");
    h.update(format!(
        "{deps:?}\0{python}\0{}-{}\0",
        std::env::consts::OS,
        std::env::consts::ARCH
    ));
    for f in deps.files() {
        let bytes = read_regular(&ws.join(f), MAX_DEPS_FILE).map_err(|e| format!("{f}: {e}"))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize())[..16].to_string())
}

/// The bytes of the regular file at `path`, never through a link, at most `limit`.
fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if m.len() > limit {
        return Err(std::io::Error::other(format!("over {limit} bytes")));
    }
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

async fn log(artifacts: &dyn ArtifactStore, id: &JobId, text: &str) {
    if !text.is_empty() {
        let _ = artifacts.append_log(id, text.as_bytes()).await;
    }
}

/// `<env_root>/<owner>`, opened without following links and (where
/// scripts run as another user) owned by that user.
struct OwnerDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl OwnerDir {
    fn open(root: &Path, owner: &str, ids: Option<(u32, u32)>) -> Result<OwnerDir, String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", root.display());
        // The root is the worker's own (root-owned on a cloud machine).
        std::fs::create_dir_all(root).map_err(|e| fail("creating", e))?;
        let root_fd = open_dir(libc::AT_FDCWD, root.as_os_str().as_bytes())
            .map_err(|e| fail("opening", e))?;
        let name = hex::encode(sha2::Sha256::digest(owner.as_bytes()))[..16].to_string();
        let cname = CString::new(name.clone()).expect("hex has no NUL");
        // SAFETY: mkdirat on a descriptor we own and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(root_fd.as_raw_fd(), cname.as_ptr(), 0o700) } == 0;
        if !made && std::io::Error::last_os_error().kind() != std::io::ErrorKind::AlreadyExists {
            return Err(fail(
                "creating the owner's directory in",
                std::io::Error::last_os_error(),
            ));
        }
        let fd = open_dir(root_fd.as_raw_fd(), name.as_bytes())
            .map_err(|e| fail("opening the owner's directory in", e))?;
        if let Some((uid, gid)) = ids {
            // The owner's directory is the attempt's user's, private: no
            // other owner's job can enter it. What it holds stays as it is
            // (sealed environments are root's, read-only); uv's cache is
            // given to this user for the build (every process of the
            // previous one is gone).
            // SAFETY: fchown/fchmod on a descriptor we own.
            if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0
                || unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } != 0
            {
                return Err(fail(
                    "handing the owner's directory to the job's user in",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(OwnerDir {
            path: root.join(name),
            fd,
        })
    }

    /// Whether `name` is a directory here (a link is not).
    fn holds_dir(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: fstatat into a struct we own, on a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let ok = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } == 0;
        ok && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// An exclusive lock on `<key>.lock` (never through a link).
    async fn lock(&self, key: &str) -> Result<OwnedFd, String> {
        let dir = self.fd.try_clone().map_err(|e| format!("lock: {e}"))?;
        let name = format!("{key}.lock");
        tokio::task::spawn_blocking(move || {
            crate::worker::users::lock_file(dir.as_raw_fd(), &name, true)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("lock: {e}"))?
        .ok_or_else(|| "lock: not taken".to_string())
    }

    /// The directory `name` here, opened without following a link.
    fn sub(&self, name: &str) -> std::io::Result<crate::worker::jobfs::Dir> {
        crate::worker::jobfs::Dir::open(&self.path)?.sub(Path::new(name))
    }

    /// Renames `from` to `to` in this directory (entries, never followed).
    fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        let (f, t) = (
            CString::new(from).expect("no NUL"),
            CString::new(to).expect("no NUL"),
        );
        let dir = self.fd.as_raw_fd();
        // SAFETY: renameat of two NUL-terminated names within a directory we hold open.
        if unsafe { libc::renameat(dir, f.as_ptr(), dir, t.as_ptr()) } != 0 {
            return Err(format!(
                "placing the build: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

fn open_dir(at: i32, name: &[u8]) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: openat with a NUL-terminated name; the descriptor is ours.
    let raw = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One build, under a temporary name in the owner's directory.
struct Build<'a> {
    uv: &'a Path,
    cfg: &'a WorkerConfig,
    ids: Option<(u32, u32)>,
    owner_dir: &'a OwnerDir,
    tmp: PathBuf,
    ws: &'a Path,
}

/// Most output kept of one build step, per stream (the rest is read and dropped).
const MAX_STEP_OUTPUT: usize = 256 << 10;

/// What one build step did.
struct Step {
    ok: bool,
    text: String,
    /// Output past [`MAX_STEP_OUTPUT`] was dropped.
    cut: bool,
}

/// Everything `r` writes until it closes, keeping the first
/// [`MAX_STEP_OUTPUT`] bytes; whether any was dropped.
async fn capped<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let (mut kept, mut cut) = (Vec::new(), false);
    let Some(r) = r else {
        return (kept, cut);
    };
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_STEP_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
    (kept, cut)
}

/// What a build printed, and why it failed (one line) if it did.
struct Built {
    output: String,
    failure: Option<String>,
}

impl Build<'_> {
    /// uv with the job's user and uv's settings; where scripts run as
    /// another user, nothing else of the worker's environment.
    fn uv(&self) -> Command {
        let mut c = Command::new(self.uv);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(self.ws)
            .env("UV_CACHE_DIR", self.owner_dir.path.join(".cache"))
            .env("NO_COLOR", "1");
        if let Some((uid, gid)) = self.ids {
            c.env_clear()
                .envs(self.cfg.uv_env.iter().cloned())
                .env("UV_CACHE_DIR", self.owner_dir.path.join(".cache"))
                .env("HOME", &self.owner_dir.path)
                .env("UV_NO_CONFIG", "1")
                .env("NO_COLOR", "1");
            crate::worker::users::run_as(&mut c, uid, gid);
        } else {
            c.envs(self.cfg.uv_env.iter().cloned());
        }
        c
    }

    async fn run(&self, deps: &Deps, python: &str, mut seen: watch::Receiver<Seen>) -> Built {
        let mut output = String::new();
        let venv = self.tmp.as_os_str();
        let mut steps: Vec<(&str, Command)> = Vec::new();
        let mut create = self.uv();
        create
            .args(["venv", "--no-project", "--python", python])
            .arg(venv);
        steps.push(("uv venv", create));
        let target = self.tmp.join("bin").join("python");
        match deps {
            Deps::Requirements | Deps::Pyproject => {
                let file = deps.files()[0];
                let mut install = self.uv();
                install
                    .args(["pip", "install", "--python"])
                    .arg(&target)
                    .args(["-r", file]);
                steps.push(("uv pip install", install));
            }
            Deps::Locked => {
                let mut sync = self.uv();
                sync.args(["sync", "--frozen", "--no-install-project", "--python"])
                    .arg(&target)
                    .env("UV_PROJECT_ENVIRONMENT", venv);
                steps.push(("uv sync", sync));
            }
            Deps::None => {}
        }
        for (what, cmd) in steps {
            let step = match self.step(cmd, &mut seen).await {
                Ok(step) => step,
                Err(why) => {
                    return Built {
                        output,
                        failure: Some(format!("{what}: {why}")),
                    }
                }
            };
            for line in step.text.lines().filter(|l| !l.trim().is_empty()) {
                output.push_str("[uv] ");
                output.push_str(line);
                output.push('\n');
            }
            if step.cut {
                output.push_str("[studio] (uv's output cut here)\n");
            }
            if !step.ok {
                return Built {
                    failure: Some(format!("{what}: {}", reason(&step.text))),
                    output,
                };
            }
        }
        Built {
            output,
            failure: None,
        }
    }

    /// Runs one step in a process group of its own (which dies with the
    /// worker), keeping at most [`MAX_STEP_OUTPUT`] of its output; the
    /// group is killed when the step ends (nothing it started stays) or
    /// when the job is cancelled or taken over meanwhile.
    async fn step(
        &self,
        mut cmd: Command,
        seen: &mut watch::Receiver<Seen>,
    ) -> Result<Step, String> {
        cmd.process_group(0);
        if self.ids.is_none() {
            #[cfg(target_os = "linux")]
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.uv.display()))?;
        let pgid = child.id().map_or(0, |p| p as i32);
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let finished = async {
            let (o, e) = tokio::join!(capped(out.as_mut()), capped(err.as_mut()));
            (child.wait().await, o, e)
        };
        let stopped = async {
            loop {
                if matches!(*seen.borrow(), Seen::Cancelled | Seen::Lost) {
                    return;
                }
                if seen.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let result = tokio::select! {
            (status, (o, cut_o), (e, cut_e)) = finished => Ok(Step {
                ok: status.is_ok_and(|s| s.success()),
                text: format!("{}{}", String::from_utf8_lossy(&o), String::from_utf8_lossy(&e)),
                cut: cut_o || cut_e,
            }),
            () = stopped => Err("stopped: the job was cancelled or taken over".to_string()),
        };
        signal_group(pgid, libc::SIGKILL);
        result
    }

    /// Before a build as another user: uv's cache of this owner is that
    /// user's (an earlier attempt's user built it; none of its processes
    /// is alive).
    async fn take_cache(&self) -> Result<(), String> {
        let Some((uid, gid)) = self.ids else {
            return Ok(());
        };
        let dir = match crate::worker::jobfs::Dir::open(&self.owner_dir.path.join(".cache")) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("uv's cache: {e}")),
        };
        tokio::task::spawn_blocking(move || dir.give(uid, gid, &|_, m| m))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("uv's cache: {e}"))
    }

    /// A finished build, made root's and read-only before it is used
    /// (where it was built as another user, every process of that user is
    /// killed first): no later job changes what it runs.
    async fn seal(&self, tmp: &str) -> Result<(), String> {
        let Some((uid, _)) = self.ids else {
            return Ok(());
        };
        let dir = self
            .owner_dir
            .sub(tmp)
            .map_err(|e| format!("sealing the build: {e}"))?;
        tokio::task::spawn_blocking(move || {
            crate::worker::users::clear(uid)?;
            dir.give(0, 0, &|is_dir, m| {
                if is_dir || m & 0o100 != 0 {
                    0o755
                } else {
                    0o644
                }
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sealing the build: {e}"))
    }

    /// A failed build's files go (every process that built them first).
    async fn discard(&self) {
        let (tmp, ids) = (self.tmp.clone(), self.ids);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some((uid, _)) = ids {
                let _ = crate::worker::users::clear(uid);
            }
            // std's remove_dir_all never follows a link.
            let _ = std::fs::remove_dir_all(&tmp);
        })
        .await;
    }
}

/// The one line of uv's output that says why: its error, with the cause
/// uv gives under it, cut to a readable length.
pub fn reason(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("error:") || l.starts_with('×'))
        .unwrap_or(lines.len().saturating_sub(1));
    let mut said: Vec<String> = Vec::new();
    for l in lines.iter().skip(start).take(3) {
        let l = l
            .trim_start_matches("error:")
            .trim_start_matches('×')
            .trim_start_matches("╰─▶")
            .trim_start_matches('│')
            .trim();
        if !l.is_empty() && !l.starts_with("hint:") && !l.starts_with("help:") {
            said.push(l.to_string());
        }
    }
    let mut r = said.join(" ");
    if r.chars().count() > 300 {
        r = r.chars().take(297).collect::<String>() + "...";
    }
    if r.is_empty() {
        "failed, and said nothing".to_string()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_uvs_error_and_its_cause_in_one_line() {
        let out = "Using CPython 3.11.7\n  × No solution found when resolving dependencies:\n  ╰─▶ Because nosuchpkg was not found in the package registry and you require\n      nosuchpkg, we can conclude that your requirements are unsatisfiable.\n";
        assert_eq!(
            reason(out),
            "No solution found when resolving dependencies: Because nosuchpkg was not found in the package registry and you require nosuchpkg, we can conclude that your requirements are unsatisfiable."
        );
        assert_eq!(
            reason("error: Failed to spawn: `x`\n  Caused by: No such file\n"),
            "Failed to spawn: `x` Caused by: No such file"
        );
        assert_eq!(reason(""), "failed, and said nothing");
    }

    #[test]
    fn the_dependency_files_decide_the_kind_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Deps::of(d.path()), Deps::None);
        std::fs::write(d.path().join("pyproject.toml"), "[project]\n").unwrap();
        assert_eq!(Deps::of(d.path()), Deps::Pyproject);
        std::fs::write(d.path().join("requirements.txt"), "numpy\n").unwrap();
        assert_eq!(Deps::of(d.path()), Deps::Requirements);
        let a = key(&Deps::Requirements, "3.12", d.path()).unwrap();
        assert_eq!(a, key(&Deps::Requirements, "3.12", d.path()).unwrap());
        assert_ne!(a, key(&Deps::Requirements, "3.11", d.path()).unwrap());
        std::fs::write(d.path().join("requirements.txt"), "numpy==2.1\n").unwrap();
        assert_ne!(a, key(&Deps::Requirements, "3.12", d.path()).unwrap());
        std::fs::write(d.path().join("uv.lock"), "version = 1\n").unwrap();
        assert_eq!(Deps::of(d.path()), Deps::Locked);
    }
}
