//! Whether this machine is about to be taken away, from the cloud's own
//! metadata service: EC2 IMDSv2 (`spot/instance-action`, token first, and the
//! rebalance recommendation) or GCE (`instance/preempted`).
//!
//! The metadata services speak plain HTTP on a link-local address, so a
//! minimal HTTP/1.1 client is enough and keeps any HTTP stack out of core.

use async_trait::async_trait;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the metadata service says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Nothing planned.
    Clear,
    /// Elevated risk (EC2 rebalance recommendation): finish, take no new work.
    Rebalance,
    /// The machine will be reclaimed: stop the script and hand the job back.
    Terminate(String),
}

#[async_trait]
pub trait NoticeSource: Send + Sync {
    /// Never fails: an unreachable service reads as [`Notice::Clear`].
    async fn check(&self) -> Notice;
    /// How long the script gets between SIGTERM and SIGKILL on a notice.
    fn grace(&self) -> Duration;
    /// The machine's zone, recorded on its attempts (`None`: unknown).
    async fn zone(&self) -> Option<String> {
        None
    }
    /// The cloud's unique id of this machine where its name can be used
    /// again (GCE), recorded on its attempts (`None`: the name is unique).
    async fn machine_uid(&self) -> Option<String> {
        None
    }
}

/// No metadata service (the local backend).
pub struct NoNotice;

#[async_trait]
impl NoticeSource for NoNotice {
    async fn check(&self) -> Notice {
        Notice::Clear
    }
    fn grace(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// EC2's instance metadata service, version 2.
pub struct Ec2Metadata {
    /// `http://169.254.169.254` on a machine; a stand-in's address in tests.
    pub base: String,
}

/// GCE's metadata server.
pub struct GceMetadata {
    /// `http://metadata.google.internal` on a machine.
    pub base: String,
}

#[async_trait]
impl NoticeSource for Ec2Metadata {
    async fn check(&self) -> Notice {
        let Ok((200, token)) = http(
            &self.base,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        )
        .await
        else {
            return Notice::Clear;
        };
        let token = token.trim().to_string();
        let auth = [("X-aws-ec2-metadata-token", token.as_str())];
        if let Ok((200, body)) = http(
            &self.base,
            "GET",
            "/latest/meta-data/spot/instance-action",
            &auth,
        )
        .await
        {
            return Notice::Terminate(format!("EC2 spot instance-action {}", body.trim()));
        }
        if let Ok((200, _)) = http(
            &self.base,
            "GET",
            "/latest/meta-data/events/recommendations/rebalance",
            &auth,
        )
        .await
        {
            return Notice::Rebalance;
        }
        Notice::Clear
    }
    /// Two minutes' notice; keep a margin for the checkpoint upload.
    fn grace(&self) -> Duration {
        Duration::from_secs(90)
    }
    async fn zone(&self) -> Option<String> {
        let Ok((200, token)) = http(
            &self.base,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await
        else {
            return None;
        };
        let auth = [("X-aws-ec2-metadata-token", token.trim())];
        match http(
            &self.base,
            "GET",
            "/latest/meta-data/placement/availability-zone",
            &auth,
        )
        .await
        {
            Ok((200, z)) if !z.trim().is_empty() => Some(z.trim().to_string()),
            _ => None,
        }
    }
}

#[async_trait]
impl NoticeSource for GceMetadata {
    async fn check(&self) -> Notice {
        match http(
            &self.base,
            "GET",
            "/computeMetadata/v1/instance/preempted",
            &[("Metadata-Flavor", "Google")],
        )
        .await
        {
            Ok((200, body)) if body.trim().eq_ignore_ascii_case("TRUE") => {
                Notice::Terminate("GCE instance preempted".into())
            }
            _ => Notice::Clear,
        }
    }
    /// About 30 s between the soft off and power off.
    fn grace(&self) -> Duration {
        Duration::from_secs(20)
    }
    /// `projects/NUMBER/zones/ZONE` on the server: the last part.
    async fn zone(&self) -> Option<String> {
        match http(
            &self.base,
            "GET",
            "/computeMetadata/v1/instance/zone",
            &[("Metadata-Flavor", "Google")],
        )
        .await
        {
            Ok((200, z)) => z
                .trim()
                .rsplit('/')
                .next()
                .filter(|z| !z.is_empty())
                .map(str::to_string),
            _ => None,
        }
    }
    /// `instance/id`: the VM's numeric id, new for each VM a managed
    /// instance group creates under a name it used before.
    async fn machine_uid(&self) -> Option<String> {
        match http(
            &self.base,
            "GET",
            "/computeMetadata/v1/instance/id",
            &[("Metadata-Flavor", "Google")],
        )
        .await
        {
            Ok((200, id))
                if !id.trim().is_empty() && id.trim().bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(id.trim().to_string())
            }
            _ => None,
        }
    }
}

/// One GET of a metadata service (GCE's wants `Metadata-Flavor: Google`).
///
/// # Errors
/// No answer within 2 s, or not HTTP.
pub async fn metadata_get(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    http(base, "GET", path, headers).await
}

/// One HTTP/1.1 request with a 2-second budget; returns status and body.
/// `base` may carry a path prefix (a stand-in serving several machines).
async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// metadata endpoints"))?;
    let (host, prefix) = match host.split_once('/') {
        Some((h, p)) => (h, format!("/{}", p.trim_end_matches('/'))),
        None => (host, String::new()),
    };
    let path = format!("{prefix}{path}");
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let run = async {
        let mut s = TcpStream::connect(&addr).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| bad("no header end"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "metadata service timed out")
        })?
}
