//! `studio ui`: serves the page and its API (in [`api`]) on loopback.

use crate::backend;
use crate::backend::{local_if_exists, replace_dead_driver, DRIVER_CHECK_EVERY};
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use anyhow::Context as _;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct UiArgs {
    /// The port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on. Anything but loopback lets others on the
    /// network see your jobs and cancel them: there is no login.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub bind: String,
    /// Open the page in a browser: STUDIO_BROWSER (a command; the page's
    /// address is added), else xdg-open (open on macOS). The browser is
    /// given a private file that leads it on, never the token itself.
    #[arg(long)]
    pub open: bool,
}

mod api;
mod open;

/// `studio ui`: serves the page and its API until Ctrl-C or SIGTERM.
pub(crate) async fn serve_ui(g: &Globals, env: &Env, a: UiArgs) -> Result<ExitCode, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let ip: std::net::IpAddr = a.bind.parse().map_err(|e| {
        usage(format!(
            "--bind '{}': {e} (an IP address, e.g. 127.0.0.1)",
            a.bind
        ))
    })?;
    let local = local_if_exists(g).await?;
    let aws = backend::aws(&g.home, env).await?;
    let gcs = match &aws {
        Some(_) => backend::gcs(&g.home, env).await.ok(),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind((ip, a.port))
        .await
        .with_context(|| {
            format!(
                "listening on {ip}:{} (another studio ui? --port 0 picks a free port)",
                a.port
            )
        })?;
    let addr = listener.local_addr()?;
    let shown = if ip.is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    if !ip.is_loopback() {
        eprintln!(
            "studio: warning: serving on {addr}: anyone who can reach it sees your jobs and can cancel them (there is no login)"
        );
    }
    // Output files pass through here on their way to the browser: under
    // the home, private to its user (not the shared /tmp).
    let scratch = g.home.join(format!("ui-scratch-{}", std::process::id()));
    studio_local::files::create_dir_all(&scratch)
        .and_then(|()| studio_local::files::restrict_dir(&scratch))
        .with_context(|| format!("creating {}", scratch.display()))?;
    let token = api::new_token().context("reading /dev/urandom for the page's token")?;
    let url = format!("http://{shown}/?token={token}");
    let handover = if a.open {
        Some(
            open::write_handover(&scratch, &url)
                .with_context(|| format!("writing the browser's page in {}", scratch.display()))?,
        )
    } else {
        None
    };
    let src = Arc::new(api::Sources {
        local: std::sync::Mutex::new(local.map(Arc::new)),
        aws,
        gcs,
        user: env.user.clone(),
        loopback_port: ip.is_loopback().then_some(addr.port()),
        scratch: scratch.clone(),
        token,
        handover: std::sync::Mutex::new(handover.clone()),
    });
    println!("studio ui: {url}");
    std::io::stdout().flush()?;
    // The address is on stdout (for scripts); a terminal showing both
    // streams gets it once.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!("studio: serving jobs and pools (Ctrl-C to stop)");
    } else {
        eprintln!("studio: serving jobs and pools at {url} (Ctrl-C to stop)");
    }
    if let Some(page) = handover {
        // The browser gets a file's path, never the token: see `open`.
        if let Err(why) =
            open::start_browser(env.vars.get("STUDIO_BROWSER").map(String::as_str), &page)
        {
            eprintln!("studio: could not open a browser ({why}); open the address above yourself");
        }
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut looks = tokio::time::interval(DRIVER_CHECK_EVERY);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let src = src.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| api::handle(src.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = looks.tick() => {
                // A home that appeared (a first `studio run` in another
                // shell), and a driver for it while the page is open, as
                // `status` and a waiting `run` make sure of.
                let current = src.local.lock().expect("not poisoned").clone();
                match current {
                    None => {
                        if let Some(be) = local_if_exists(g).await? {
                            *src.local.lock().expect("not poisoned") = Some(Arc::new(be));
                        }
                    }
                    Some(be) => replace_dead_driver(g, &be).await?,
                }
            }
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("studio: ui stopped");
    Ok(ExitCode::SUCCESS)
}
