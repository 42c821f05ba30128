//! What stays the user's own, as a user meets it with the real binary:
//! `studio pull` never writes through a link inside its destination,
//! `studio ui --open` never puts the page's token on a command line, and
//! nothing under `$STUDIO_HOME` is readable by anyone else after a job ran.
//! Waits are polls with a deadline.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[macro_use]
mod common;
use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The pull test's job id (its `./studio-out/JOB` is made before the run).
const JOB: &str = "pull-past-a-link";

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn pull_refuses_a_link_inside_its_destination_and_writes_nothing_through_it() {
    let h = Home::new();
    let root = h.dir.path();
    let outside = root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    // The waiting `run` pulls into ./studio-out/JOB, where sub is a link:
    // the job is done, its outputs stay in the store, and it says why.
    let run_dest = h.work().join("studio-out").join(JOB);
    std::fs::create_dir_all(&run_dest).unwrap();
    std::os::unix::fs::symlink(&outside, run_dest.join("sub")).unwrap();
    script(
        &h.work(),
        "outs.py",
        "import os\n\
         out = os.environ['STUDIO_OUTPUT_DIR']\n\
         os.makedirs(os.path.join(out, 'sub', 'deeper'))\n\
         open(os.path.join(out, 'top'), 'w').write('top\\n')\n\
         open(os.path.join(out, 'sub', 'x'), 'w').write('x\\n')\n\
         open(os.path.join(out, 'sub', 'deeper', 'y'), 'w').write('y\\n')\n",
    );
    let out = h.run(&["run", "--job-id", JOB, "outs.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "studio: outputs not downloaded: studio-out/{JOB}/sub is a symbolic link; studio pull does not write through links"
        )),
        "{}",
        stderr(&out)
    );
    assert!(entries(&outside).is_empty(), "{:?}", entries(&outside));
    assert_eq!(entries(&run_dest), ["sub"], "nothing else written");
    let id = JOB;

    // DEST/sub -> a directory elsewhere: refused, with the link named,
    // before anything is written.
    let dest = root.join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
    let refused = h.run(&["pull", id, dest.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let why = format!(
        "{} is a symbolic link; studio pull does not write through links",
        dest.join("sub").display()
    );
    assert!(stderr(&refused).contains(&why), "{}", stderr(&refused));
    assert!(entries(&outside).is_empty(), "{:?}", entries(&outside));
    assert_eq!(entries(&dest), ["sub"], "nothing else written");
    assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));

    // The same link one level down (DEST/sub/deeper): refused too.
    let dest2 = root.join("dest2");
    std::fs::create_dir_all(dest2.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, dest2.join("sub/deeper")).unwrap();
    let refused = h.run(&["pull", id, dest2.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "{} is a symbolic link",
            dest2.join("sub/deeper").display()
        )),
        "{}",
        stderr(&refused)
    );
    assert!(entries(&outside).is_empty(), "{:?}", entries(&outside));

    // A link at a file's own name is replaced by the file, its target
    // left alone; DEST itself may be a link (the user named it).
    let victim = root.join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    let real = root.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&victim, real.join("top")).unwrap();
    let named = root.join("named");
    std::os::unix::fs::symlink(&real, &named).unwrap();
    let pulled = h.run(&["pull", id, named.to_str().unwrap()]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    assert_eq!(stdout(&pulled).lines().count(), 3, "{}", stdout(&pulled));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    assert!(std::fs::symlink_metadata(real.join("top"))
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(std::fs::read_to_string(real.join("top")).unwrap(), "top\n");
    assert_eq!(
        std::fs::read_to_string(real.join("sub/deeper/y")).unwrap(),
        "y\n"
    );
    assert_eq!(entries(&real), ["sub", "top"], "no temporary file left");
}

/// A child killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `studio ui --open` with `STUDIO_BROWSER` pointed at a script that
/// records its arguments: no token in them, and what they name (a private
/// file) leads to the page with the token, once.
#[test]
fn ui_open_gives_the_browser_a_private_file_never_the_token() {
    let h = Home::at("home");
    let root = h.dir.path();
    let argv = root.join("argv");
    let recorder = script(
        root,
        "browser.sh",
        "#!/bin/sh\nout=\"$1\"; shift\nprintf '%s\\n' \"$@\" > \"$out.part\" && mv \"$out.part\" \"$out\"\n",
    );
    std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = h.cmd(&["ui", "--port", "0", "--open"]);
    cmd.env("STUDIO_BROWSER", format!("{recorder} {}", argv.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let (child, address) = studio_tests::spawn_announcing(cmd, "studio ui: ");
    let mut child = Killed(child);
    let (base, token) = address.split_once("/?token=").unwrap();
    assert_eq!(token.len(), 32, "{address}");

    let got = wait_until("the browser to be started", Duration::from_secs(20), || {
        std::fs::read_to_string(&argv).ok()
    });
    let args: Vec<&str> = got.lines().collect();
    assert_eq!(args.len(), 1, "{got}");
    assert!(
        !got.contains(token),
        "the token is in the browser's argv: {got}"
    );
    let page = PathBuf::from(args[0].strip_prefix("file://").expect(args[0]));
    assert!(
        page.starts_with(h.path()),
        "under the home: {}",
        page.display()
    );
    assert_eq!(mode(&page), 0o600);
    assert_eq!(mode(page.parent().unwrap()), 0o700);
    assert_eq!(mode(&h.path()), 0o700);

    // What the browser does with it: on to the tokened address, which
    // sets the cookie and moves on to `/`; the file has done its work and
    // is gone. (cli/tests/ui.rs follows it in a real browser.)
    let html = std::fs::read_to_string(&page).unwrap();
    let to = html
        .split("location.replace(\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no redirect in {html}"));
    assert_eq!(to, format!("{base}/?token={token}"));
    let hostport = base.strip_prefix("http://").unwrap();
    let mut conn = std::net::TcpStream::connect(hostport).unwrap();
    let path = to.strip_prefix(base).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("location.replace(\"/\")"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("set-cookie: studio_ui={token}")),
        "{answer}"
    );
    assert!(!page.exists(), "the page is removed once the token is in");

    signal(child.0.id(), libc::SIGTERM);
    assert!(wait_for(&mut child.0, Duration::from_secs(10)).is_some_and(|s| s.success()));
    assert!(!page.parent().unwrap().exists(), "scratch removed on exit");
}

/// Every file and directory under the home is the user's alone once a job
/// with outputs, a checkpoint and files in its workspace has run, with the
/// caller's umask a permissive 022; what `run` pulls out of the home is
/// made as the user's other files are.
#[test]
fn nothing_under_the_home_is_readable_by_others_after_a_job() {
    // The home beside the working directory, not around it.
    let h = Home::at("home");
    script(
        &h.work(),
        "writes.py",
        "import os\n\
         out = os.environ['STUDIO_OUTPUT_DIR']\n\
         os.makedirs(os.path.join(out, 'results'))\n\
         open(os.path.join(out, 'model.bin'), 'wb').write(b'm' * 4096)\n\
         open(os.path.join(out, 'results', 'r.json'), 'w').write('{}')\n\
         open(os.path.join(os.environ['STUDIO_CHECKPOINT_DIR'], 'state'), 'w').write('1')\n\
         os.makedirs('made/here')\n\
         open('made/here/notes.txt', 'w').write('n')\n\
         print('done')\n",
    );
    let mut cmd = h.cmd(&["run", "writes.py"]);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    // The driver prunes the ended job's workspace (what was unpacked goes).
    wait_until("the job to be pruned", Duration::from_secs(30), || {
        (h.count("SELECT COUNT(*) FROM ended") == 0).then_some(())
    });

    let job = h.path().join("jobs").join(&id);
    for want in [
        "log",
        "attempt-1/outputs/model.bin",
        "attempt-1/outputs/results/r.json",
        "attempt-1/workspace/made/here/notes.txt",
    ] {
        assert!(job.join(want).exists(), "{want} in {}", job.display());
    }
    assert!(
        entries(&job.join("files")).len() >= 3,
        "outputs and manifest"
    );
    assert!(!entries(&job.join("checkpoints")).is_empty());

    let mut open = Vec::new();
    let mut seen = 0;
    walk(&h.path(), &mut open, &mut seen);
    assert!(seen > 20, "walked only {seen} entries");
    assert!(open.is_empty(), "readable by others: {open:#?}");

    // Pulled out of the home, outputs are ordinary files of the user's.
    let pulled = h.work().join("studio-out").join(&id);
    assert_eq!(mode(&pulled.join("model.bin")), 0o644);
    assert_eq!(mode(&pulled.join("results")), 0o755);
}

/// Every entry under `dir` (links not followed) with a group or other
/// permission bit, as `path mode`.
fn walk(dir: &Path, open: &mut Vec<String>, seen: &mut usize) {
    let m = mode(dir);
    if m & 0o077 != 0 {
        open.push(format!("{} {m:o}", dir.display()));
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        *seen += 1;
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            walk(&p, open, seen);
        } else if !meta.file_type().is_symlink() && mode(&p) & 0o077 != 0 {
            open.push(format!("{} {:o}", p.display(), mode(&p)));
        }
    }
}
