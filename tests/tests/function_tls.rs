//! The functions' HTTPS client (`shared/aws/src/tls.rs`) still reaches an
//! endpoint whose certificate chains to a root it holds: a local TLS
//! server under a test CA, the CA added as a deployment would add one
//! (`AWS_CA_BUNDLE`), and refused without it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Endpoint {
    url: String,
    ca_pem: String,
    served: Arc<AtomicUsize>,
}

/// An HTTPS server for `localhost` whose certificate a fresh CA signed;
/// it answers every request as SQS's JSON protocol answers ListQueues.
async fn endpoint() -> Endpoint {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Studio test root");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Read the request (headers, then Content-Length bytes).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                s.fetch_add(1, Ordering::SeqCst);
                let body = "{}";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                     x-amzn-requestid: test\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Endpoint {
        url: format!("https://localhost:{port}"),
        ca_pem: ca_cert.pem(),
        served,
    }
}

fn sqs(
    url: &str,
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
) -> aws_sdk_sqs::Client {
    // The tests' emulator settings (static credentials, no retries), over
    // the functions' HTTPS client.
    let sdk = studio_aws::emulator_config("us-east-1", url)
        .to_builder()
        .http_client(http)
        .build();
    aws_sdk_sqs::Client::new(&sdk)
}

#[tokio::test]
async fn a_root_added_through_aws_ca_bundle_is_trusted_and_only_then() {
    let end = endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &end.ca_pem).unwrap();
    let path = bundle.display().to_string();

    // As a function sees it: AWS_CA_BUNDLE names the file.
    let http = studio_aws::tls::https_client_from(|k| (k == "AWS_CA_BUNDLE").then(|| path.clone()))
        .unwrap();
    let out = sqs(&end.url, http).list_queues().send().await;
    assert!(out.is_ok(), "with the test CA added: {out:?}");
    assert_eq!(end.served.load(Ordering::SeqCst), 1);

    // The compiled-in roots alone do not hold the test CA: the handshake
    // fails on the certificate, and the server serves nothing.
    let out = sqs(&end.url, studio_aws::tls::https_client(None))
        .list_queues()
        .send()
        .await;
    let err = format!("{:?}", out.expect_err("an unknown issuer must be refused"));
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
    assert_eq!(end.served.load(Ordering::SeqCst), 1);
}
