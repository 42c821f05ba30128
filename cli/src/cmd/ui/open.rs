//! `studio ui --open`: starting a browser on the page without putting the
//! page's token on any command line.
//!
//! A process's arguments are readable by every user of the machine
//! (`ps`, `/proc/PID/cmdline`), and the token is the one thing that keeps
//! those users out of a loopback port they can all reach: `xdg-open
//! http://127.0.0.1:8080/?token=…` would hand it to them, as would every
//! browser process `xdg-open` starts with the same address.
//!
//! So the token goes through a file only this user can read: a small HTML
//! page, `0600`, in the server's scratch directory under the home (`0700`),
//! that sends the browser on to the tokened address (`location.replace`,
//! with a meta refresh and a link as fallbacks). The browser is given that
//! file's `file://` path, which names nothing secret. The server removes the
//! file as soon as the token has been presented (the page is open: the
//! browser now holds the cookie), and with the scratch directory on exit.
//!
//! The alternative, a one-time code in the address exchanged for the
//! cookie, is not sound: the code is in argv for as long as the browser
//! runs, and whoever reads it first (a loop over `/proc` wins against a
//! browser starting up) redeems it.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The name of the hand-over page in the server's scratch directory.
const PAGE: &str = "open.html";

/// Writes the page that sends a browser on to `url` into `dir` (a
/// directory of this user's alone), `0600`, and returns its path.
///
/// # Errors
/// I/O errors.
pub(super) fn write_handover(dir: &Path, url: &str) -> io::Result<PathBuf> {
    let path = dir.join(PAGE);
    // One left by an earlier server with the same pid (killed before it
    // could clean up): the directory is this user's, so it is theirs too.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = studio_local::files::options()
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(handover_page(url).as_bytes())?;
    Ok(path)
}

/// The page: no referrer sent on, replaced in history (Back does not
/// return to a file that is gone).
fn handover_page(url: &str) -> String {
    let attr = url.replace('&', "&amp;").replace('"', "&quot;");
    let js = serde_json::Value::String(url.to_string()).to_string();
    format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta http-equiv=\"refresh\" content=\"0; url={attr}\">\n<title>studio ui</title>\n\
         <script>location.replace({js});</script>\n\
         <p>Opening <a href=\"{attr}\">studio ui</a>…</p>\n"
    )
}

/// Starts a browser on `target` (the hand-over page): `STUDIO_BROWSER`
/// when set (a command, split at spaces; the address is added as its last
/// argument), else `xdg-open` (`open` on macOS). Returns the command's
/// name when it cannot be started, with why.
pub(super) fn start_browser(configured: Option<&str>, target: &Path) -> Result<(), String> {
    let default = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let mut words = configured
        .map(str::split_whitespace)
        .into_iter()
        .flatten()
        .peekable();
    let (program, args): (String, Vec<String>) = if words.peek().is_some() {
        let program = words.next().expect("peeked").to_string();
        (program, words.map(String::from).collect())
    } else {
        (default.to_string(), Vec::new())
    };
    Command::new(&program)
        .args(args)
        .arg(file_url(target))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("{program}: {e}"))
}

/// `file://` and the absolute path, bytes outside the unreserved set and
/// `/` percent-encoded.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut s = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_url_encodes_what_a_url_cannot_hold() {
        assert_eq!(
            file_url(Path::new("/home/a b/.studio/ui-scratch-1/open.html")),
            "file:///home/a%20b/.studio/ui-scratch-1/open.html"
        );
        assert_eq!(file_url(Path::new("/x/é#?")), "file:///x/%C3%A9%23%3F");
    }

    #[test]
    fn the_page_is_private_and_sends_the_browser_on() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:8080/?token=00ff";
        std::fs::write(d.path().join(PAGE), "stale").unwrap();
        let p = write_handover(d.path(), url).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let page = std::fs::read_to_string(&p).unwrap();
        assert!(
            page.contains(&format!("location.replace(\"{url}\")")),
            "{page}"
        );
        assert!(page.contains(&format!("url={url}\"")), "{page}");
    }
}
