//! `scripts/deploy` itself, as a user runs it, against a `moto_server` of
//! its own (a stack's EventBridge targets make moto fail other tests'
//! `PutEvents` while it exists): where the workers' binaries come from.
//!
//! - `--prebuilt DIR` takes them from DIR, as before;
//! - `--workers-from DIR` takes them from a release build (`scripts/wheel`
//!   writes `studio-ARCH` and `SHA256SUMS-ARCH`), each checked against its
//!   SHA-256; the stack's checksum parameter and the artifact bucket's
//!   `releases/studio-<sha256>` are that binary's;
//! - a binary that does not match its sum, or an architecture the directory
//!   lacks, is refused before any call to AWS: no stack is created.
//!
//! The functions' zips are stand-ins (moto never runs them); the AWS CLI is
//! the one `scripts/test` pins, in the virtualenv of `STUDIO_TEST_PYTHON`.

use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FUNCTIONS: [&str; 5] = [
    "submit",
    "scale-on-queue-depth",
    "handle-spot-interruption",
    "cleanup-empty-group",
    "webhook",
];

/// A `moto_server` of this test's own, stopped (with its process group) when
/// dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("moto_server must be on PATH (scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, url }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// DIR with the five functions' stand-in zips (and nothing else).
fn functions_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in FUNCTIONS {
        let zip = dir.join(format!("{f}.zip"));
        let made = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').writestr('bootstrap', '#!/bin/sh\\n')",
            ])
            .arg(&zip)
            .status()
            .unwrap();
        assert!(made.success(), "python3 made no {}", zip.display());
    }
}

/// A release directory as `scripts/wheel` leaves it: `studio-x86_64` (here a
/// copy of `binary`), its `SHA256SUMS-x86_64` and `BUILT-FROM-x86_64`.
fn release_dir(dir: &Path, binary: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let b = dir.join("studio-x86_64");
    std::fs::copy(binary, &b).unwrap();
    std::fs::write(
        dir.join("SHA256SUMS-x86_64"),
        format!("{}  studio-x86_64\n", sha256_hex(&b)),
    )
    .unwrap();
    std::fs::write(dir.join("BUILT-FROM-x86_64"), "0123456789abcdef release\n").unwrap();
    b
}

fn deploy(moto: &Moto, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The AWS CLI scripts/test pins (beside its python), before any other.
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(bin) = std::env::var_os("STUDIO_TEST_PYTHON")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        path =
            std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap();
    }
    Command::new(root.join("scripts/deploy"))
        .env("PATH", path)
        .args(args)
        .args(["--worker-ami", "ami-12345678"])
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stack's `BinarySha256X86` parameter and `ArtifactBucket` output, or
/// `None` when there is no such stack.
async fn stack(moto: &Moto, name: &str) -> Option<(String, String)> {
    let sdk = studio_aws::emulator_config("us-east-1", &moto.url);
    let cfn = aws_sdk_cloudformation::Client::new(&sdk);
    let s = cfn.describe_stacks().stack_name(name).send().await.ok()?;
    let s = s.stacks()[0].clone();
    let param = s
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("BinarySha256X86"))
        .and_then(|p| p.parameter_value())
        .unwrap_or_default()
        .to_string();
    let bucket = s
        .outputs()
        .iter()
        .find(|o| o.output_key() == Some("ArtifactBucket"))
        .and_then(|o| o.output_value())
        .unwrap_or_default()
        .to_string();
    Some((param, bucket))
}

async fn object(moto: &Moto, bucket: &str, key: &str) -> Vec<u8> {
    let sdk = studio_aws::emulator_config("us-east-1", &moto.url);
    let s3 = aws_sdk_s3::Client::new(&sdk);
    let o = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("s3://{bucket}/{key}: {e:?}"));
    o.body.collect().await.unwrap().to_vec()
}

/// A deploy of stack `s3` with the workers from `release`, which must be
/// refused before any AWS call, leaving no stack; returns what it said.
async fn refused(moto: &Moto, prebuilt: &Path, release: &Path, archs: &str) -> String {
    let out = deploy(
        moto,
        &[
            "s3",
            "--prebuilt",
            prebuilt.to_str().unwrap(),
            "--workers-from",
            release.to_str().unwrap(),
            "--worker-archs",
            archs,
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        !err.contains("== 1/8"),
        "refused before any AWS call: {err}"
    );
    assert!(
        stack(moto, "s3").await.is_none(),
        "no stack for a refused deploy"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_come_from_the_release_build_checked_or_from_prebuilt() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    // Two different x86_64 executables (a real one, and one byte more), so
    // each deploy's binary shows.
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    std::fs::copy("/bin/true", &first).unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.push(0);
    std::fs::write(&second, bytes).unwrap();
    let (first, second) = (first.as_path(), second.as_path());

    // --prebuilt, as before: the functions and the worker from one directory.
    let pre = tmp.path().join("prebuilt");
    functions_dir(&pre);
    std::fs::copy(first, pre.join("studio-x86_64")).unwrap();
    let out = deploy(
        &moto,
        &[
            "s1",
            "--prebuilt",
            pre.to_str().unwrap(),
            "--worker-archs",
            "x86_64",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (sha, bucket) = stack(&moto, "s1").await.expect("stack s1");
    assert_eq!(sha, sha256_hex(first));
    assert_eq!(
        object(&moto, &bucket, &format!("releases/studio-{sha}")).await,
        std::fs::read(first).unwrap()
    );

    // --workers-from: the release build's worker, the functions from
    // --prebuilt. (Another stack: moto 5.2.1 fails UpdateStack of this
    // template, an AttributeError in its IAM role update.)
    let rel = tmp.path().join("release");
    release_dir(&rel, second);
    let out = deploy(
        &moto,
        &[
            "s2",
            "--prebuilt",
            pre.to_str().unwrap(),
            "--workers-from",
            rel.to_str().unwrap(),
            "--worker-archs",
            "x86_64",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (sha, bucket) = stack(&moto, "s2").await.expect("stack s2");
    assert_eq!(sha, sha256_hex(second), "{}", stderr(&out));
    assert_eq!(
        object(&moto, &bucket, &format!("releases/studio-{sha}")).await,
        std::fs::read(second).unwrap()
    );

    // A binary changed after its sum was written: refused, nothing created.
    let bad = tmp.path().join("tampered");
    let b = release_dir(&bad, second);
    std::fs::write(&b, b"\x7fELF not the built binary").unwrap();
    let err = refused(&moto, &pre, &bad, "x86_64").await;
    assert!(err.contains("does not match its SHA-256"), "{err}");

    // An architecture the release directory lacks: named, with what makes it.
    let err = refused(&moto, &pre, &rel, "x86_64,arm64").await;
    assert!(
        err.contains("studio-arm64")
            && err.contains("scripts/wheel --target aarch64-unknown-linux-gnu"),
        "{err}"
    );
}

/// Without `--prebuilt` or `--workers-from`, `scripts/deploy` takes the
/// workers from `dist/` only when every architecture there was built from
/// this very checkout (its commit, nothing tracked modified) with the
/// release profile, and says which it chose before anything else. Run in a
/// git checkout of the script and the template alone, with no Rust on
/// `PATH`, so each run stops at the prerequisites, before any AWS call.
#[test]
fn by_default_the_workers_come_from_dist_only_when_built_from_this_checkout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    for f in ["scripts/deploy", "infra/template.yaml"] {
        let to = repo.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(f), &to).unwrap();
    }
    let git = |args: &[&str]| -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "the script and the template"]);
    let head = git(&["rev-parse", "HEAD"]);
    let dist = repo.join("dist");
    release_dir(&dist, Path::new("/bin/true"));
    // What the workers would be, as the script says it first.
    let said = || -> String {
        let venv_bin = std::env::var_os("STUDIO_TEST_PYTHON")
            .map(PathBuf::from)
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let path = format!("/usr/bin:/bin:{}", venv_bin.display());
        let out = Command::new(repo.join("scripts/deploy"))
            .args(["s1", "--worker-archs", "x86_64", "--region", "us-east-1"])
            .env("PATH", path)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_MAX_ATTEMPTS", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "no Rust here: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            !err.contains("== 1/8"),
            "stopped before any AWS call: {err}"
        );
        err.lines()
            .find(|l| l.contains("workers: "))
            .unwrap_or_else(|| panic!("no word on the workers: {err}"))
            .to_string()
    };
    let built = dist.join("BUILT-FROM-x86_64");
    std::fs::write(&built, format!("{head} release\n")).unwrap();
    let line = said();
    assert!(
        line.contains("the release build's") && line.contains(&head),
        "{line}"
    );
    // Another commit's binary.
    std::fs::write(&built, "0123456789abcdef release\n").unwrap();
    let line = said();
    assert!(
        line.contains("built here") && line.contains("0123456789abcdef"),
        "{line}"
    );
    // This commit's, but not a release build (CI's check profile).
    std::fs::write(&built, format!("{head} wheel-check\n")).unwrap();
    let line = said();
    assert!(
        line.contains("built here") && line.contains("wheel-check"),
        "{line}"
    );
    // This commit's release build, but a tracked file changed since.
    std::fs::write(&built, format!("{head} release\n")).unwrap();
    let mut template = std::fs::read_to_string(repo.join("infra/template.yaml")).unwrap();
    template.push_str("\n# changed\n");
    std::fs::write(repo.join("infra/template.yaml"), template).unwrap();
    let line = said();
    assert!(
        line.contains("built here") && line.contains("modified"),
        "{line}"
    );
    git(&["checkout", "-q", "--", "infra/template.yaml"]);
    // Unmodified again, but the binary is not the one its sum names.
    std::fs::write(dist.join("studio-x86_64"), b"\x7fELF not the built one").unwrap();
    let line = said();
    assert!(
        line.contains("built here") && line.contains("does not match its SHA-256"),
        "{line}"
    );
}
