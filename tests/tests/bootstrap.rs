//! The worker bootstrap as the images users boot run it: the rendered
//! user-data, in a root filesystem that has what stock Ubuntu and Amazon
//! Linux 2023 images both have (bash, curl, coreutils, sed, python3 with its
//! standard library: cloud-init runs on it) and nothing they lack (no `aws`
//! CLI, no `iptables`, no package manager that works offline), against an
//! S3 that authenticates and authorizes every request: a `moto_server` of
//! the test's own with IAM enforcement on (`INITIAL_NO_AUTH_ACTION_COUNT`),
//! so botocore's SigV4 code and moto's policy evaluation decide whether the
//! bootstrap's signed GET is right, not our reading of the docs. The
//! machine's role credentials come from the metadata stand-in, as IMDSv2
//! serves them.
//!
//! Needs root or unprivileged user namespaces (`unshare -r`, for chroot and
//! a bind mount of /dev/null) and `scripts/test`'s virtualenv (moto_server,
//! boto3).

use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use studio_aws::fleet::{AsgFleet, FleetConfig};
use studio_core::ids::PoolKey;
use studio_tests::MetadataStandIn;

/// A server of the test's own, its process group stopped on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn venv_python() -> PathBuf {
    PathBuf::from(
        std::env::var("STUDIO_TEST_PYTHON")
            .expect("run with scripts/test, which makes the virtualenv with moto and boto3"),
    )
}

/// A moto_server that authenticates and authorizes every request after
/// the first `free` ones.
fn moto_with_iam(free: u32) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = venv_python().with_file_name("moto_server");
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("moto_server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

/// Copies `tool` from this machine's PATH into `root` with the shared
/// libraries it loads, at the same paths.
fn copy_tool(root: &Path, tool: &str) {
    let path = std::env::var("PATH").unwrap();
    let found = std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} on this machine, for the image"));
    let target = root.join("usr/bin").join(tool);
    std::fs::copy(&found, &target).unwrap();
    copy_libs(root, &found);
}

/// The shared libraries `binary` loads, into `root` at the same paths.
fn copy_libs(root: &Path, binary: &Path) {
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| s.starts_with('/'));
        if let Some(lib) = lib {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            if !to.exists() {
                std::fs::copy(lib, &to).unwrap();
            }
        }
    }
}

/// The machine's own python3 (the system's, not a virtualenv's) with its
/// standard library, at the same paths.
fn python(root: &Path) {
    let exe = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("a system python3 for the image");
    let real = exe.canonicalize().unwrap();
    let out = Command::new(&real)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib']); print(sysconfig.get_paths()['platstdlib'])",
        ])
        .output()
        .unwrap();
    let target = root.join("usr/bin/python3");
    std::fs::copy(&real, &target).unwrap();
    copy_libs(root, &real);
    for dir in String::from_utf8_lossy(&out.stdout).lines() {
        copy_tree(
            root,
            Path::new(dir),
            &root.join(dir.trim_start_matches('/')),
        );
    }
}

/// `from` into `to` (under `root`), with the libraries its extension
/// modules load; no caches, tests or installed packages.
fn copy_tree(root: &Path, from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "__pycache__" || name == "test" || name == "site-packages" {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(root, &e.path(), &to.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
            if e.path().extension().is_some_and(|x| x == "so") {
                copy_libs(root, &e.path());
            }
        }
    }
}

fn write_exec(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a stock image has that the bootstrap may use; systemctl records
/// its calls (no init runs in a test).
fn image(root: &Path) {
    for d in [
        "usr/bin",
        "etc/systemd/system",
        "usr/local/bin",
        "var/log",
        "dev",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Merged /usr, as on both images.
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("sbin")).unwrap();
    std::fs::write(root.join("dev/null"), "").unwrap();
    for tool in [
        "bash",
        "sh",
        "curl",
        "sed",
        "head",
        "date",
        "sha256sum",
        "install",
        "rm",
        "uname",
        "cat",
        "chmod",
        "sleep",
    ] {
        copy_tool(root, tool);
    }
    python(root);
    write_exec(
        &root.join("usr/bin/systemctl"),
        "#!/bin/bash\necho \"$*\" >> /var/log/systemctl-calls\n",
    );
    for absent in ["aws", "iptables", "dnf", "apt-get", "openssl"] {
        assert!(!root.join("usr/bin").join(absent).exists());
    }
}

/// Runs `script` (a path inside `root`) as root in `root`, with `args`.
fn in_image(root: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("unshare");
    c.args(["--map-root-user", "--mount", "/bin/sh", "-c"])
        .arg(r#"mount --bind /dev/null "$0/dev/null" && exec chroot "$0" "$@""#)
        .arg(root)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    let out = c.output().expect("unshare");
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unshare failed") {
        panic!(
            "this test needs root or unprivileged user namespaces: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The two release objects and their checksums.
struct Releases {
    studio: Vec<u8>,
    uv: Vec<u8>,
}

impl Releases {
    fn new() -> Releases {
        let mut rng = studio_tests::Rng(7);
        Releases {
            studio: (0..200_000).map(|_| rng.next_u64() as u8).collect(),
            uv: b"#!/bin/sh\necho uv 0.0-test\n".to_vec(),
        }
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A world: an authenticating S3 holding the releases under `names`
/// (`studio` and `uv` objects, by default under their own checksums), the
/// machine's role credentials on the metadata stand-in, and the rendered
/// user-data pointed at both.
struct World {
    _moto: Server,
    url: String,
    _imds: MetadataStandIn,
    user_data: String,
    dir: tempfile::TempDir,
}

async fn world(r: &Releases, studio_bytes_served: &[u8]) -> World {
    let (moto, url) = moto_with_iam(6);
    let dir = tempfile::tempdir().unwrap();
    let (s, u) = (dir.path().join("studio"), dir.path().join("uv"));
    std::fs::write(&s, studio_bytes_served).unwrap();
    std::fs::write(&u, &r.uv).unwrap();
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/python/s3_role.py");
    let out = Command::new(venv_python())
        .arg(setup)
        .arg(&url)
        .arg("studio-artifacts")
        .arg(format!("releases/studio-{}=", sha(&r.studio)) + s.to_str().unwrap())
        .arg(format!("releases/uv-{}=", sha(&r.uv)) + u.to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let creds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let imds = MetadataStandIn::start().await;
    imds.set_role_credentials(
        creds["role"].as_str().unwrap(),
        creds["key_id"].as_str().unwrap(),
        creds["secret"].as_str().unwrap(),
        creds["token"].as_str().unwrap(),
    );
    let sdk = studio_aws::emulator_config("us-east-1", &url);
    let fleet = AsgFleet::new(
        aws_sdk_ec2::Client::new(&sdk),
        aws_sdk_autoscaling::Client::new(&sdk),
        FleetConfig {
            prefix: "studio".into(),
            region: "us-east-1".into(),
            image_id: "ami-0test".into(),
            arm64_image_id: None,
            gpu_image_id: None,
            instance_profile: None,
            subnets: Vec::new(),
            availability_zones: vec!["us-east-1a".into()],
            max_size: 4,
            worker_env: "STUDIO_BACKEND=aws".into(),
            studio_sha256_x86_64: Some(sha(&r.studio)),
            studio_sha256_arm64: Some(sha(&r.studio)),
            uv_sha256_x86_64: Some(sha(&r.uv)),
            uv_sha256_arm64: Some(sha(&r.uv)),
            bucket: "studio-artifacts".into(),
            // Path-style at the test's S3; production signs for the
            // virtual-hosted address (`FleetConfig::s3_base_for`), the
            // same code on another base.
            s3_base: format!("{url}/studio-artifacts"),
        },
    );
    let rendered = fleet.user_data(&PoolKey::new("ec2spot-2c-0g-abc").unwrap());
    let imds_line = "imds_base=http://169.254.169.254\n";
    assert!(rendered.contains(imds_line), "one IMDS address to point");
    let user_data = rendered.replace(imds_line, &format!("imds_base={}\n", imds.url));
    World {
        _moto: moto,
        url,
        _imds: imds,
        user_data,
        dir,
    }
}

impl World {
    /// A fresh image with the user-data at `/user-data`.
    fn image(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join(name);
        image(&root);
        write_exec(&root.join("user-data"), &self.user_data);
        root
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bootstrap_installs_the_worker_on_an_image_without_the_aws_cli_or_iptables() {
    let r = Releases::new();
    let w = world(&r, &r.studio).await;

    // Authentication is on: an unsigned GET of the same object is refused.
    let unsigned = reqwest_free_get(&format!(
        "{}/studio-artifacts/releases/studio-{}",
        w.url,
        sha(&r.studio)
    ));
    assert!(unsigned.starts_with("HTTP/1.1 403"), "{unsigned}");

    let root = w.image("ubuntu-like");
    let out = in_image(&root, &["/bin/bash", "/user-data"]);
    assert!(out.status.success(), "{}", text(&out));
    let installed = std::fs::read(root.join("usr/local/bin/studio")).unwrap();
    assert!(installed == r.studio, "the studio binary, byte for byte");
    let mode = std::fs::metadata(root.join("usr/local/bin/studio"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read(root.join("usr/local/bin/uv")).unwrap(), r.uv);
    assert!(!root.join("usr/local/bin/studio.download").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/studio/instance.env")).unwrap(),
        "STUDIO_INSTANCE_ID=i-0standin0000001\n"
    );
    let calls = std::fs::read_to_string(root.join("var/log/systemctl-calls")).unwrap();
    assert_eq!(
        calls,
        "daemon-reload\nenable --now studio-metadata-block.service\nenable --now studio-worker.service\n"
    );
    // Nothing of the role's credentials left behind or printed.
    let printed = text(&out);
    assert!(
        !printed.contains("ASIA") && !printed.contains("Token"),
        "{printed}"
    );
    for file in ["etc/studio/worker.env", "etc/studio/instance.env"] {
        let t = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(!t.contains("ASIA"), "{file}: {t}");
    }

    // The metadata block on the same image: no iptables and no package
    // manager to get one: it fails loudly (the worker requires it).
    let block = in_image(
        &root,
        &["/usr/local/lib/studio/metadata-block", "2000-2999"],
    );
    assert!(!block.status.success());
    assert!(
        text(&block).contains("no iptables here and none could be installed"),
        "{}",
        text(&block)
    );
    // With dnf (Amazon Linux 2023), it installs iptables and inserts the
    // rule for the jobs' uids first in OUTPUT.
    write_exec(
        &root.join("usr/bin/dnf"),
        "#!/bin/sh\necho \"$*\" >> /var/log/dnf-calls\nprintf '#!/bin/sh\\necho \"$*\" >> /var/log/iptables-calls\\ncase \"$*\" in *\" -C \"*) exit 1;; esac\\n' > /usr/bin/iptables\nchmod 0755 /usr/bin/iptables\n",
    );
    let block = in_image(
        &root,
        &["/usr/local/lib/studio/metadata-block", "2000-2999"],
    );
    assert!(block.status.success(), "{}", text(&block));
    assert_eq!(
        std::fs::read_to_string(root.join("var/log/dnf-calls")).unwrap(),
        "install -y -q iptables-nft\n"
    );
    let rules = std::fs::read_to_string(root.join("var/log/iptables-calls")).unwrap();
    assert!(
        rules
            .contains("-w -I OUTPUT 1 -d 169.254.169.254 -m owner --uid-owner 2000-2999 -j REJECT"),
        "{rules}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_is_not_its_checksum_stops_the_bootstrap_before_anything_runs() {
    let r = Releases::new();
    let mut other = r.studio.clone();
    other[1000] ^= 1;
    let w = world(&r, &other).await;
    let root = w.image("tampered");
    let out = in_image(&root, &["/bin/bash", "/user-data"]);
    assert!(!out.status.success(), "{}", text(&out));
    // What the control plane reads from the console as it retires the
    // machine (cloud-init passes the script's output there).
    let said = studio_core::pool::LaunchTrouble::bootstrap_said(&text(&out));
    let want = format!(
        "releases/studio-{} in the bucket is not its checksum: not installed",
        sha(&r.studio)
    );
    assert_eq!(said.as_deref(), Some(want.as_str()), "{}", text(&out));
    assert!(!root.join("usr/local/bin/studio").exists());
    assert!(!root.join("usr/local/bin/studio.download").exists());
    assert!(
        !root.join("var/log/systemctl-calls").exists(),
        "no unit started"
    );
}

/// One unsigned GET, its status line and headers (no HTTP client crate for
/// one request).
fn reqwest_free_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
