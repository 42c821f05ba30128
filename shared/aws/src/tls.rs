//! The Lambda functions' HTTPS client: Mozilla's root store compiled in,
//! made into a trust store once, at the first connection.
//!
//! Why: the SDK's default client reads the platform's roots (the bundle,
//! then every file in `/etc/ssl/certs`) and parses them again for every
//! SDK client it validates, at construction. That was 3.5 of a function's
//! 7.7 ms init (bench/RESULTS.md, 2026-12-07), before any event.
//!
//! Where the roots come from, and how they stay current: the
//! `webpki-root-certs` crate (Mozilla's CA store, from the CCADB), pinned
//! in Cargo.lock and taken again at every `cargo update`; the functions are
//! rebuilt at every deploy. The roots AWS endpoints chain to (Amazon Root
//! CA 1–4, Starfield Services Root G2) are in it, which a test checks.
//! `AWS_CA_BUNDLE` (the SDKs' setting for a custom bundle) adds a PEM file's
//! roots: a TLS-inspecting proxy's, or a test CA.
//!
//! The CLI and workers keep the platform's roots: they run on users' and
//! images' machines, whose administrators add their own CAs there.

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;
use base64::Engine;
use std::sync::OnceLock;

/// The compiled-in roots, with `extra_pem`'s added: an HTTPS client whose
/// trust store is built at its first connection, not when an SDK client is
/// made from it.
pub fn https_client(extra_pem: Option<Vec<u8>>) -> SharedHttpClient {
    Lazy {
        extra_pem,
        inner: OnceLock::new(),
    }
    .into_shared()
}

/// [`https_client`] with `AWS_CA_BUNDLE`'s roots when `lookup` names one:
/// an unreadable or certificate-less file is an error at once, not a
/// failed handshake later.
pub fn https_client_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<SharedHttpClient, String> {
    let Some(path) = lookup("AWS_CA_BUNDLE").filter(|p| !p.trim().is_empty()) else {
        return Ok(https_client(None));
    };
    let pem = std::fs::read(&path).map_err(|e| format!("AWS_CA_BUNDLE {path}: {e}"))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("AWS_CA_BUNDLE {path}: no PEM certificate in it"));
    }
    Ok(https_client(Some(pem)))
}

/// The compiled-in roots as one PEM bundle (the form the SDK's trust store
/// takes).
pub fn mozilla_roots_pem() -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut pem = Vec::with_capacity(webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() * 2200);
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let text = b64.encode(der.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

#[derive(Debug)]
struct Lazy {
    extra_pem: Option<Vec<u8>>,
    inner: OnceLock<SharedHttpClient>,
}

impl Lazy {
    fn client(&self) -> &SharedHttpClient {
        self.inner.get_or_init(|| {
            let mut store = TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(mozilla_roots_pem());
            if let Some(extra) = &self.extra_pem {
                store = store.with_pem_certificate(extra.clone());
            }
            let context = TlsContext::builder()
                .with_trust_store(store)
                .build()
                .expect("a TLS context of PEM roots builds");
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build_https()
        })
    }
}

impl HttpClient for Lazy {
    // The default client's connector cache (one per timeout setting) does
    // the rest: the roots are parsed once per process.
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.client().http_connector(settings, components)
    }

    // `validate_base_client_config` is left at its default (nothing): the
    // SDK's own client builds a whole connector there, roots included,
    // for every SDK client made.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Vec<String> {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| String::from_utf8_lossy(c.as_ref()).into_owned())
            .collect()
    }

    #[test]
    fn the_roots_aws_endpoints_chain_to_are_compiled_in() {
        // AWS's service endpoints present certificates from Amazon Trust
        // Services, chaining to these (their cross-sign to Starfield G2).
        let all = subjects();
        for name in [
            "Amazon Root CA 1",
            "Amazon Root CA 2",
            "Amazon Root CA 3",
            "Amazon Root CA 4",
            "Starfield Services Root Certificate Authority - G2",
        ] {
            assert!(
                all.iter().any(|s| s.contains(name)),
                "{name} missing from the compiled-in roots"
            );
        }
    }

    #[test]
    fn the_pem_bundle_holds_every_root_and_parses_back() {
        use rustls_pki_types::pem::PemObject;
        let pem = mozilla_roots_pem();
        let back: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(back.len() > 100, "{} roots", back.len());
        for (a, b) in back.iter().zip(webpki_root_certs::TLS_SERVER_ROOT_CERTS) {
            assert_eq!(a.as_ref(), b.as_ref());
        }
    }

    #[test]
    fn a_named_bundle_that_is_missing_or_holds_no_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("studio-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        for (path, says) in [(&missing, "No such file"), (&empty, "no PEM certificate")] {
            let p = path.display().to_string();
            let err = https_client_from(|k| (k == "AWS_CA_BUNDLE").then(|| p.clone())).unwrap_err();
            assert!(err.contains("AWS_CA_BUNDLE") && err.contains(says), "{err}");
        }
        assert!(https_client_from(|_| None).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
