//! A hostile tenant on a cloud machine: the real worker code, on the cloud
//! path (a uid per attempt from a range, the worker root), running scripts
//! that attack what the worker does as root and what the next job holds.
//! Each attack is printed with what it got; each must get nothing.
//!
//! Needs root (to switch users, and for the metadata block's network
//! namespace); elsewhere each test says so and checks nothing. CI runs as
//! root. The metadata test also needs iptables (`scripts/test` installs it
//! where it can).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use studio_core::handlers::submit;
use studio_core::job::{Job, JobState};
use studio_core::notice::NoNotice;
use studio_core::ports::ArtifactStore;
use studio_core::worker::{run_worker, users, JobUsers, WorkerConfig};
use studio_tests::{eventually, job_id, JobBuilder, JobPool, LocalWorld};

fn is_root(skipped: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {skipped} needs root");
    }
    root
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
}

/// A secret of the machine's: a file only root can read, in a directory
/// only root can enter. The worker (root) could read it; no job may.
struct Secret {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    text: String,
}

impl Secret {
    fn new() -> Secret {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vault");
        std::fs::create_dir(&dir).unwrap();
        let text = format!("MACHINE-SECRET-{}", ulid::Ulid::new());
        std::fs::write(dir.join("key.txt"), &text).unwrap();
        mode(&dir.join("key.txt"), 0o600);
        mode(&dir, 0o700);
        mode(d.path(), 0o755);
        Secret { _dir: d, dir, text }
    }

    /// Whether `bytes` (or, if gzip, what it inflates to) holds the secret.
    fn in_bytes(&self, bytes: &[u8]) -> bool {
        use std::io::Read;
        let mut inflated = Vec::new();
        let _ = flate2::read::GzDecoder::new(bytes).read_to_end(&mut inflated);
        let needle = self.text.as_bytes();
        [bytes, inflated.as_slice()]
            .iter()
            .any(|b| b.windows(needle.len()).any(|w| w == needle))
    }

    fn untouched(&self) -> bool {
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names == ["key.txt"]
    }
}

/// A work root as on a machine (traversable), and a worker config on the
/// cloud path with `uids`.
fn machine(
    uids: (u32, u32),
    pool: &studio_core::ids::PoolKey,
) -> (tempfile::TempDir, WorkerConfig) {
    let root = tempfile::tempdir().unwrap();
    mode(root.path(), 0o755);
    let cfg = WorkerConfig {
        pool: pool.clone(),
        instance: studio_core::ids::InstanceId::new("w-hostile").unwrap(),
        lease: Duration::from_secs(30),
        beat_every: Duration::from_millis(200),
        poll_wait: Duration::from_millis(100),
        heartbeat: Duration::from_millis(50),
        seen_every: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        term_grace: Duration::from_secs(5),
        work_root: root.path().join("jobs"),
        python: "python3".into(),
        notice: Arc::new(NoNotice),
        notice_every: Duration::from_secs(60),
        checkpoint_every: Duration::ZERO,
        log_every: Duration::from_millis(100),
        progress_every: Duration::from_millis(100),
        env_root: root.path().join("envs"),
        uv: None,
        uv_env: studio_tests::uv_env(),
        job_users: Some(JobUsers {
            first: uids.0,
            last: uids.1,
        }),
        metadata: Vec::new(),
        inputs: None,
        local_limits: false,
    };
    (root, cfg)
}

/// Submits a job whose workspace is `main.py` = `script`.
async fn submit_script(
    w: &LocalWorld,
    id: &str,
    script: &str,
    args: &[&str],
    outputs: &[&str],
    env: &[(&str, &str)],
) {
    let files = [("main.py", script.as_bytes().to_vec())];
    submit_files(w, id, "m", &files, args, outputs, env).await;
}

/// Submits job `id` of `owner` whose workspace holds `files`; the script
/// is `main.py`.
async fn submit_files(
    w: &LocalWorld,
    id: &str,
    owner: &str,
    files: &[(&str, Vec<u8>)],
    args: &[&str],
    outputs: &[&str],
    env: &[(&str, &str)],
) {
    let src = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(src.path().join(name), bytes).unwrap();
    }
    let tar = studio_core::workspace::pack_dir(src.path(), 8 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let mut spec = JobBuilder::new(id).workspace(ws).args(args).spec();
    spec.entrypoint = "main.py".into();
    spec.owner = owner.to_string();
    spec.outputs = outputs.iter().map(|s| s.to_string()).collect();
    spec.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec.settle_version();
    submit(&w.be.ctx, id, &spec.to_json()).await.unwrap();
}

async fn ended(w: &LocalWorld, id: &str) -> (Job, String) {
    let job = eventually("the job to end", Duration::from_secs(120), async || {
        let j = w.be.ctx.store.get_job(&job_id(id)).await.unwrap().unwrap();
        j.state.is_terminal().then_some(j)
    })
    .await;
    let log =
        String::from_utf8_lossy(&w.be.artifacts.read_log(&job.id, 0).await.unwrap()).into_owned();
    (job, log)
}

/// Every output file the job's attempts stored, by path, with its bytes.
async fn outputs_of(w: &LocalWorld, job: &Job) -> Vec<(String, Vec<u8>)> {
    let scratch = tempfile::tempdir().unwrap();
    let mut got = Vec::new();
    for r in job.attempts.iter().filter_map(|a| a.outputs.as_ref()) {
        let m = studio_core::outputs_store::manifest(
            w.be.artifacts.as_ref(),
            &job.id,
            r,
            scratch.path(),
        )
        .await
        .unwrap();
        for f in &m.files {
            let at = scratch.path().join(&f.sha256);
            w.be.artifacts
                .get_blob(&job.id, &f.sha256, &at)
                .await
                .unwrap();
            got.push((f.path.clone(), std::fs::read(&at).unwrap()));
        }
    }
    got
}

/// The script replaces its output directory, its checkpoint directory, a
/// named output and the old scratch directory with links to a secret of
/// the machine's: the worker, root, collects its outputs and checkpoint
/// and writes its manifest, and none of it reads or writes the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_place_of_the_jobs_directories_reach_nothing() {
    if !is_root("the hostile tenant suite") {
        return;
    }
    let w = LocalWorld::default().await;
    let secret = Secret::new();
    let script = r#"
import os, shutil, sys
secret = sys.argv[1]
out, ck = os.environ['STUDIO_OUTPUT_DIR'], os.environ['STUDIO_CHECKPOINT_DIR']
open(os.path.join(out, 'real.txt'), 'w').write('mine')
shutil.rmtree(ck); os.symlink(secret, ck)
os.symlink(secret, 'results')
os.makedirs('named'); os.symlink(os.path.join(secret, 'key.txt'), 'named/key.txt')
open('named/real.txt', 'w').write('mine')
try:
    os.symlink(secret, os.path.join(os.path.dirname(out), '.studio'))
except OSError as e:
    print('scratch link:', e)
shutil.rmtree(out); os.symlink(secret, out)
print('replaced my directories with links to', secret)
"#;
    submit_script(
        &w,
        "links",
        script,
        &[secret.dir.to_str().unwrap()],
        &["results", "named"],
        &[],
    )
    .await;
    let pool = w.be.store_job_pool("links").await;
    let (_root, cfg) = machine((310_000, 310_009), &pool);
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let (job, log) = ended(&w, "links").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Finished, "{:?}\n{log}", job.reason);
    assert!(log.contains("replaced my directories"), "{log}");
    let outputs = outputs_of(&w, &job).await;
    eprintln!(
        "attack: output, checkpoint, named outputs and scratch replaced by links to {}; collected: {:?}",
        secret.dir.display(),
        outputs.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &outputs {
        assert!(
            !secret.in_bytes(bytes),
            "the secret was collected as {path}"
        );
    }
    let paths: Vec<&str> = outputs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["named/real.txt"],
        "the job's own file is still collected"
    );
    if let Some(c) = &job.checkpoint {
        let tar = w.be.artifacts.get_checkpoint(&job.id, c).await.unwrap();
        assert!(
            !secret.in_bytes(&tar),
            "the secret was packed as a checkpoint"
        );
    }
    assert!(log.contains("output results not found"), "{log}");
    assert!(
        secret.untouched(),
        "nothing was written into the secret's directory"
    );
}

/// The script swaps a checkpoint file for a link to the secret and back,
/// as fast as it can, while the worker packs the directory again and again
/// (every heartbeat): no checkpoint stored holds the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_file_swapped_for_a_link_mid_pack_is_never_followed() {
    if !is_root("the hostile tenant suite") {
        return;
    }
    let w = LocalWorld::default().await;
    let secret = Secret::new();
    let signals = tempfile::tempdir().unwrap();
    mode(signals.path(), 0o777);
    let go = signals.path().join("stop");
    let script = r#"
import os, sys
key, stop = os.path.join(sys.argv[1], 'key.txt'), sys.argv[2]
ck = os.environ['STUDIO_CHECKPOINT_DIR']
state, tmp = os.path.join(ck, 'state.bin'), os.path.join(ck, 'tmp')
n = 0
while not os.path.exists(stop):
    with open(tmp, 'w') as f:
        f.write('step %d' % n)
    os.replace(tmp, state)
    os.symlink(key, tmp)
    os.replace(tmp, state)
    n += 1
print('swapped', n, 'times')
"#;
    submit_script(
        &w,
        "swap",
        script,
        &[secret.dir.to_str().unwrap(), go.to_str().unwrap()],
        &[],
        &[],
    )
    .await;
    let pool = w.be.store_job_pool("swap").await;
    let (_root, cfg) = machine((310_010, 310_019), &pool);
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    // Packs while the script swaps: until three different checkpoints were
    // stored, each read back and searched. (The script spins a core: on a
    // loaded machine this takes a minute; the deadline only catches a hang.)
    let mut seen = std::collections::HashSet::new();
    eventually(
        "three checkpoints packed mid-swap",
        Duration::from_secs(600),
        async || {
            let j =
                w.be.ctx
                    .store
                    .get_job(&job_id("swap"))
                    .await
                    .unwrap()
                    .unwrap();
            if let Some(c) = &j.checkpoint {
                if seen.insert(c.sha256.clone()) {
                    let tar = w.be.artifacts.get_checkpoint(&j.id, c).await.unwrap();
                    assert!(!secret.in_bytes(&tar), "a checkpoint holds the secret");
                }
            }
            assert!(!j.state.is_terminal(), "{:?}", j.reason);
            (seen.len() >= 3).then_some(())
        },
    )
    .await;
    std::fs::write(&go, "").unwrap();
    let (job, log) = ended(&w, "swap").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    eprintln!("attack: a checkpoint file swapped for a link to the secret mid-pack; {} checkpoints packed, none held it ({})", seen.len(), log.trim());
    assert_eq!(job.state, JobState::Finished, "{:?}\n{log}", job.reason);
    if let Some(c) = &job.checkpoint {
        let tar = w.be.artifacts.get_checkpoint(&job.id, c).await.unwrap();
        assert!(
            !secret.in_bytes(&tar),
            "the last checkpoint holds the secret"
        );
    }
}

/// Job A leaves a child behind (a new session, so not in its process
/// group) that watches every process's environment for the next job's
/// secret, and A's files stay where they were. When A has ended its child
/// is gone; job B, on the same machine next, keeps its secret, and cannot
/// read A's directory or list the work root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_job_outlives_it_to_reach_the_next() {
    if !is_root("the hostile tenant suite") {
        return;
    }
    let w = LocalWorld::default().await;
    let report = tempfile::tempdir().unwrap();
    mode(report.path(), 0o777);
    let lingerer = r#"
import os, subprocess, sys, time
report = sys.argv[1]
child = '''
import os, sys, time
report = sys.argv[1]
open(os.path.join(report, 'pid'), 'w').write(str(os.getpid()))
while True:
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                env = open('/proc/%s/environ' % p, 'rb').read()
            except OSError:
                continue
            if b'B_SECRET' in env:
                open(os.path.join(report, 'stolen'), 'wb').write(env)
    time.sleep(0.02)
'''
subprocess.Popen([sys.executable, '-c', child, report], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not os.path.exists(os.path.join(report, 'pid')):
    time.sleep(0.01)
open('a-private.txt', 'w').write('A-PRIVATE')
os.chmod('..', 0o755); os.chmod('.', 0o755); os.chmod('a-private.txt', 0o644)
print('left a child behind')
"#;
    submit_script(
        &w,
        "job-a",
        lingerer,
        &[report.path().to_str().unwrap()],
        &[],
        &[],
    )
    .await;
    let pool = w.be.store_job_pool("job-a").await;
    let (root, cfg) = machine((310_020, 310_029), &pool);
    let work_root = cfg.work_root.clone();
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let (a, log_a) = ended(&w, "job-a").await;
    assert_eq!(a.state, JobState::Finished, "{:?}\n{log_a}", a.reason);
    let pid: i32 = std::fs::read_to_string(report.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let alive = status
        .lines()
        .any(|l| l.starts_with("State:") && !l.contains('Z'));
    eprintln!(
        "attack: job A's detached child (pid {pid}, its own session) outlives A: {}",
        if alive { "it does" } else { "it is gone" }
    );
    assert!(!alive, "A's child outlived A: {status}");

    let a_file = work_root.join("job-a/attempt-1/workspace/a-private.txt");
    let reader = r#"
import os, sys
try:
    print('read A:', open(sys.argv[1]).read())
except OSError as e:
    print('cannot read A:', type(e).__name__)
try:
    print('listed:', os.listdir(sys.argv[2]))
except OSError as e:
    print('cannot list the work root:', type(e).__name__)
"#;
    submit_script(
        &w,
        "job-b",
        reader,
        &[a_file.to_str().unwrap(), work_root.to_str().unwrap()],
        &[],
        &[("B_SECRET", "b-secret-value")],
    )
    .await;
    let (b, log_b) = ended(&w, "job-b").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(b.state, JobState::Finished, "{:?}\n{log_b}", b.reason);
    eprintln!(
        "attack: job B reads A's workspace and lists the work root: {}",
        log_b.trim()
    );
    assert!(!log_b.contains("A-PRIVATE"), "{log_b}");
    assert!(log_b.contains("cannot read A"), "{log_b}");
    assert!(!log_b.contains("listed:"), "{log_b}");
    assert!(
        !report.path().join("stolen").exists(),
        "A's child read B's environment"
    );
    // The attempts' directories went with them.
    assert!(!a_file.exists(), "A's files stayed on the machine");
    drop(root);
}

/// Environments across attempts' users: owner alice's first job builds
/// one (as its attempt's uid), her second reuses it as another uid and
/// cannot change it (it is sealed, root's and read-only), and mallory's
/// job cannot enter alice's directory of environments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_environments_are_sealed_and_private_to_that_owner() {
    if !is_root("the hostile tenant suite") {
        return;
    }
    let w = LocalWorld::default().await;
    let wheels = tempfile::tempdir().unwrap();
    let whl = studio_tests::make_wheel(wheels.path(), "greeting", "0.1", "WORDS = 'hi'\n");
    let wheel = std::fs::read(wheels.path().join(&whl)).unwrap();
    let reqs = format!("./{whl}\n");
    let poison = r#"
import greeting, os, sys
print('greeting', greeting.WORDS, 'as', os.getuid())
for target in [os.path.join(sys.prefix, 'poison'), greeting.__file__]:
    try:
        open(target, 'a').write('x')
        print('poisoned', target)
    except OSError as e:
        print('cannot poison', type(e).__name__)
"#;
    let files = |script: &str| {
        vec![
            ("main.py", script.as_bytes().to_vec()),
            ("requirements.txt", reqs.as_bytes().to_vec()),
            (whl.as_str(), wheel.clone()),
        ]
    };
    submit_files(&w, "env-1", "alice", &files(poison), &[], &[], &[]).await;
    let pool = w.be.store_job_pool("env-1").await;
    let (root, mut cfg) = machine((310_030, 310_039), &pool);
    // uv where any user can run it, as /usr/local/bin is on a machine.
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let uv = bin.join("uv");
    std::fs::copy(
        studio_core::worker::pyenv::find_uv().expect("uv (scripts/test installs it)"),
        &uv,
    )
    .unwrap();
    cfg.uv = Some(uv);
    let envs = cfg.env_root.clone();
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let (first, log1) = ended(&w, "env-1").await;
    assert_eq!(
        first.state,
        JobState::Finished,
        "{:?}\n{log1}",
        first.reason
    );
    submit_files(&w, "env-2", "alice", &files(poison), &[], &[], &[]).await;
    let (second, log2) = ended(&w, "env-2").await;
    assert_eq!(
        second.state,
        JobState::Finished,
        "{:?}\n{log2}",
        second.reason
    );
    eprintln!(
        "attack: alice's second job writes into her sealed environment: {}",
        log2.lines()
            .filter(|l| l.contains("poison"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(log2.contains("): reused"), "{log2}");
    assert!(!log2.contains("poisoned"), "{log2}");
    assert_eq!(log2.matches("cannot poison").count(), 2, "{log2}");
    let uid = |log: &str| {
        log.split(" as ")
            .nth(1)
            .and_then(|r| r.lines().next())
            .map(str::to_string)
    };
    assert_ne!(uid(&log1), uid(&log2), "each attempt has a uid of its own");

    let alice = std::fs::read_dir(&envs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let snoop = r#"
import os, sys
try:
    print('entered:', os.listdir(sys.argv[1]))
except OSError as e:
    print('cannot enter', type(e).__name__)
"#;
    submit_files(
        &w,
        "env-3",
        "mallory",
        &[("main.py", snoop.as_bytes().to_vec())],
        &[alice.to_str().unwrap()],
        &[],
        &[],
    )
    .await;
    let (third, log3) = ended(&w, "env-3").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(
        third.state,
        JobState::Finished,
        "{:?}\n{log3}",
        third.reason
    );
    eprintln!(
        "attack: mallory's job enters alice's environments: {}",
        log3.trim()
    );
    assert!(log3.contains("cannot enter PermissionError"), "{log3}");
}

/// A machine whose metadata endpoint answers a job's user (the block
/// missing) runs no script: the worker hands the job back, untouched, and
/// leaves. The endpoint here is a listener the test holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_finds_the_metadata_service_open_runs_nothing() {
    if !is_root("the hostile tenant suite") {
        return;
    }
    let w = LocalWorld::default().await;
    let marker = tempfile::tempdir().unwrap();
    mode(marker.path(), 0o777);
    let ran = marker.path().join("ran");
    let script = "import sys\nopen(sys.argv[1], 'w').write('ran')\n";
    submit_script(&w, "open-md", script, &[ran.to_str().unwrap()], &[], &[]).await;
    let pool = w.be.store_job_pool("open-md").await;
    let (_root, mut cfg) = machine((310_040, 310_049), &pool);
    let standin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.metadata = vec![standin.local_addr().unwrap()];
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let exit = run_worker(&ctx, arts.as_ref(), &cfg, rx).await.unwrap();
    let job =
        w.be.ctx
            .store
            .get_job(&job_id("open-md"))
            .await
            .unwrap()
            .unwrap();
    let log =
        String::from_utf8_lossy(&w.be.artifacts.read_log(&job.id, 0).await.unwrap()).into_owned();
    eprintln!(
        "attack: a job on a machine whose metadata service answers its uid: {}",
        log.trim()
    );
    assert_eq!(
        exit,
        studio_core::worker::WorkerExit::Preempted,
        "the worker leaves"
    );
    assert_eq!(
        job.state,
        JobState::Queued,
        "handed back to run elsewhere: {:?}",
        job.reason
    );
    assert!(!ran.exists(), "the script did not run");
    assert!(log.contains("answers the job's user"), "{log}");
}

/// The metadata block after a reboot: in a fresh network namespace (no
/// firewall rule, as after a reboot) holding a stand-in of the metadata
/// service on its real addresses, only the block's unit script is run,
/// not the bootstrap. Before it, a job's user reaches the stand-in (so the
/// probe can fail); after it, no job uid of the range does, while a uid
/// outside the range still does (the network itself works).
#[test]
fn the_metadata_block_holds_after_a_reboot_and_the_worker_checks_it() {
    if !is_root("the metadata block (a network namespace)") {
        return;
    }
    if std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("iptables is needed (scripts/test installs it: apt-get install iptables)");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/metadata-block.sh");
    // Namespaces are per thread: this one, and what it starts, see only
    // the new one.
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread alone.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
        let ip = |args: &str| {
            let ok = std::process::Command::new("ip")
                .args(args.split(' '))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        ip("link set lo up");
        ip("addr add 169.254.169.254/32 dev lo");
        ip("-6 addr add fd00:ec2::254/128 dev lo nodad");
        let v4: std::net::SocketAddr = "169.254.169.254:80".parse().unwrap();
        let v6: std::net::SocketAddr = "[fd00:ec2::254]:80".parse().unwrap();
        let _l4 = std::net::TcpListener::bind(v4).unwrap();
        let _l6 = std::net::TcpListener::bind(v6).unwrap();
        let endpoints = [v4, v6];
        let wait = Duration::from_secs(5);
        let job_uid = 320_005;
        assert_eq!(
            users::reachable_as(job_uid, job_uid, &endpoints, wait).unwrap(),
            Some(v4),
            "before the block, a job's user reaches the stand-in"
        );
        let range = "320000-320009";
        for _ in 0..2 {
            // At every boot; a second run adds nothing twice.
            let out = std::process::Command::new("sh")
                .arg(&script)
                .arg(range)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let open = users::reachable_as(job_uid, job_uid, &endpoints, wait).unwrap();
        eprintln!("attack: a job's user opens the metadata service after a reboot (the block's unit run alone): {}", match open { Some(a) => format!("reached {a}"), None => "refused".into() });
        assert_eq!(open, None);
        for last in [320_000, 320_009] {
            assert_eq!(users::reachable_as(last, last, &endpoints, wait).unwrap(), None, "uid {last}");
        }
        assert_eq!(
            users::reachable_as(330_000, 330_000, &endpoints, wait).unwrap(),
            Some(v4),
            "a uid outside the range is not blocked: the rule is the user's, not the network's"
        );
        let rules = std::process::Command::new("iptables").args(["-S", "OUTPUT"]).output().unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert_eq!(rules.matches("169.254.169.254").count(), 1, "{rules}");
    })
    .join()
    .unwrap();
}
