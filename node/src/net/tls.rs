//! The TLS 1.3 handshake of libp2p's QUIC transport, with this crate's choice of cipher suites.
//!
//! The handshake follows the libp2p TLS specification
//! (<https://github.com/libp2p/specs/blob/master/tls/tls.md>): each side presents one
//! self-signed certificate whose libp2p extension carries its identity key and a signature by
//! that key over the certificate's public key; the peer id is the identity key's. Both sides
//! present one (the server asks the client for its certificate), ALPN is `libp2p`, and nothing but
//! TLS 1.3 is offered. Certificates are made and checked by `libp2p-tls`'s `certificate` module,
//! so a peer running stock libp2p and a node of this crate accept each other.
//!
//! What differs from `libp2p-tls`'s own configuration is the order of the cipher suites: it
//! offers ChaCha20-Poly1305 first everywhere. Where the CPU has AES and carry-less multiply
//! instructions (x86-64 AES-NI + PCLMULQDQ, AArch64 AES + PMULL), AES-GCM is several times
//! cheaper per byte, so a dialler with them lists AES-128-GCM first, and ChaCha20 first
//! otherwise. The server follows the client's order (rustls' default), so the dialler's
//! hardware decides, and a stock libp2p dialler still gets ChaCha20. Every byte of a QUIC packet
//! is sealed and opened with the chosen suite: on loopback the cipher was the largest single cost
//! of a transfer.
//!
//! Nothing here writes key material anywhere (no `SSLKEYLOGFILE`).

use std::sync::Arc;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use libp2p_tls::certificate;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
};

/// The ALPN protocol libp2p's QUIC and TLS handshakes agree on.
const ALPN: &[u8] = b"libp2p";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate carrying the node's identity could not be made.
    #[error("making the node's libp2p certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Which cipher suite comes first: the one this CPU runs fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherPreference {
    /// AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305.
    AesGcm,
    /// ChaCha20-Poly1305, then the two AES-GCM suites.
    ChaCha20,
}

impl CipherPreference {
    /// AES-GCM where this CPU has AES and carry-less multiply instructions, else ChaCha20.
    pub fn for_this_cpu() -> Self {
        if aes_in_hardware() {
            Self::AesGcm
        } else {
            Self::ChaCha20
        }
    }

    fn suites(self) -> Vec<SupportedCipherSuite> {
        match self {
            Self::AesGcm => vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            Self::ChaCha20 => vec![
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
            ],
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

fn provider(preference: CipherPreference) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: preference.suites(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// The configuration a node dials with: presents `keypair`'s certificate, accepts any peer whose
/// certificate is valid (which peer it is, is checked after the handshake against the address).
pub(super) fn client_config(
    keypair: &Keypair,
    preference: CipherPreference,
) -> Result<rustls::ClientConfig, TlsError> {
    let (certificate, key) =
        certificate::generate(keypair).map_err(|error| TlsError::Certificate(error.to_string()))?;
    let provider = provider(preference);
    let own = OwnCertificate::new(&provider, certificate, key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCertificate))
        .with_client_cert_resolver(Arc::new(own));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The configuration a node accepts connections with: presents `keypair`'s certificate and
/// requires one from every client.
pub(super) fn server_config(
    keypair: &Keypair,
    preference: CipherPreference,
) -> Result<rustls::ServerConfig, TlsError> {
    let (certificate, key) =
        certificate::generate(keypair).map_err(|error| TlsError::Certificate(error.to_string()))?;
    let provider = provider(preference);
    let own = OwnCertificate::new(&provider, certificate, key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerCertificate))
        .with_cert_resolver(Arc::new(own));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The node's own certificate, presented whatever the peer asks for. (rustls' ready-made
/// single-certificate settings would parse it with webpki first, which refuses the libp2p
/// extension because it is marked critical.)
#[derive(Debug)]
struct OwnCertificate(Arc<CertifiedKey>);

impl OwnCertificate {
    fn new(
        provider: &CryptoProvider,
        certificate: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let key = provider.key_provider.load_private_key(key)?;
        Ok(Self(Arc::new(CertifiedKey::new(vec![certificate], key))))
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The peer id a finished handshake proved: the identity in the peer's one certificate.
pub(super) fn peer_of(certificates: &[CertificateDer<'_>]) -> Result<PeerId, String> {
    let [certificate] = certificates else {
        return Err(format!(
            "the peer presented {} certificates, not one",
            certificates.len()
        ));
    };
    certificate::parse(certificate)
        .map(|parsed| parsed.peer_id())
        .map_err(|error| format!("the peer's certificate: {error}"))
}

/// Checks a peer's certificate as the libp2p TLS specification asks: exactly one, self-signed,
/// with a valid libp2p extension (all checked by `certificate::parse`), and handshake signatures
/// made by its key.
#[derive(Debug)]
struct PeerCertificate;

/// The signature schemes `libp2p-tls` verifies, strongest first.
const SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

fn check_presented(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "a libp2p peer presents exactly one certificate".to_owned(),
        ));
    }
    certificate::parse(end_entity).map_err(|error| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            error,
        ))))
    })?;
    Ok(())
}

fn check_signature(
    message: &[u8],
    certificate: &CertificateDer<'_>,
    signed: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let parsed = certificate::parse(certificate).map_err(|error| {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            error,
        ))))
    })?;
    parsed
        .verify_signature(signed.scheme, message, signed.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_presented(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for PeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConnection, ServerConnection};

    use super::*;

    /// Runs a TLS handshake in memory; the first error either side raises.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        fn carry(
            from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
            to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        ) -> Result<(), rustls::Error> {
            let mut bytes = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut bytes).unwrap();
            }
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets()?;
            }
            Ok(())
        }
        for _ in 0..8 {
            carry(client, server)?;
            carry(server, client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General(
            "the handshake made no progress".to_owned(),
        ))
    }

    fn connect(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let mut client =
            ClientConnection::new(Arc::new(client), ServerName::try_from("l").unwrap()).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        handshake(&mut client, &mut server)?;
        Ok((client, server))
    }

    fn suite(client: &ClientConnection) -> rustls::CipherSuite {
        client.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn the_diallers_preference_decides_the_cipher_and_both_ends_learn_the_other() {
        let dialler = Keypair::generate_ed25519();
        let listener = Keypair::generate_ed25519();
        for (client_order, server_order, expected) in [
            (
                CipherPreference::AesGcm,
                CipherPreference::ChaCha20,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                CipherPreference::ChaCha20,
                CipherPreference::AesGcm,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ),
        ] {
            let (client, server) = connect(
                client_config(&dialler, client_order).unwrap(),
                server_config(&listener, server_order).unwrap(),
            )
            .unwrap();
            assert_eq!(suite(&client), expected);
            assert_eq!(
                peer_of(client.peer_certificates().unwrap()).unwrap(),
                listener.public().to_peer_id()
            );
            assert_eq!(
                peer_of(server.peer_certificates().unwrap()).unwrap(),
                dialler.public().to_peer_id()
            );
            assert_eq!(client.alpn_protocol(), Some(ALPN));
        }
    }

    #[test]
    fn stock_libp2p_tls_peers_are_accepted_either_way() {
        let ours = Keypair::generate_ed25519();
        let theirs = Keypair::generate_ed25519();
        // A stock dialler offers ChaCha20 first and gets it.
        let (client, _) = connect(
            libp2p_tls::make_client_config(&theirs, None).unwrap(),
            server_config(&ours, CipherPreference::AesGcm).unwrap(),
        )
        .unwrap();
        assert_eq!(
            suite(&client),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        // Ours dialling a stock listener gets AES-GCM, which the stock list also holds.
        let (client, server) = connect(
            client_config(&ours, CipherPreference::AesGcm).unwrap(),
            libp2p_tls::make_server_config(&theirs).unwrap(),
        )
        .unwrap();
        assert_eq!(
            suite(&client),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            peer_of(client.peer_certificates().unwrap()).unwrap(),
            theirs.public().to_peer_id()
        );
        assert!(server.peer_certificates().is_some());
    }

    /// An ordinary self-signed certificate: valid X.509, but no libp2p extension.
    fn plain_certificate() -> OwnCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["l".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = provider(CipherPreference::AesGcm);
        OwnCertificate::new(
            &provider,
            certificate.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_without_a_libp2p_identity_is_refused_on_either_side() {
        let ours = Keypair::generate_ed25519();
        let impostor_client =
            rustls::ClientConfig::builder_with_provider(provider(CipherPreference::AesGcm))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PeerCertificate))
                .with_client_cert_resolver(Arc::new(plain_certificate()));
        let error = connect(
            impostor_client,
            server_config(&ours, CipherPreference::AesGcm).unwrap(),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error}"
        );

        let impostor_server =
            rustls::ServerConfig::builder_with_provider(provider(CipherPreference::AesGcm))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(Arc::new(PeerCertificate))
                .with_cert_resolver(Arc::new(plain_certificate()));
        let error = connect(
            client_config(&ours, CipherPreference::AesGcm).unwrap(),
            impostor_server,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error}"
        );
    }

    #[test]
    fn a_peer_presenting_two_certificates_is_refused() {
        let (certificate, _) = certificate::generate(&Keypair::generate_ed25519()).unwrap();
        assert!(peer_of(&[certificate.clone(), certificate.clone()]).is_err());
        assert!(peer_of(&[]).is_err());
        assert!(check_presented(&certificate, std::slice::from_ref(&certificate)).is_err());
        assert!(check_presented(&certificate, &[]).is_ok());
    }
}
