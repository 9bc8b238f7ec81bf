//! The operator console: one self-contained page (`GET /`, no external scripts, styles or
//! fonts, so that it works on a depot LAN with no way out) and what it needs to sign an
//! operator in (`GET /v1/login`).
//!
//! The page is public and holds no data: everything it shows comes from the API with the
//! operator's own credential, which the access table checks. It is served with a
//! Content-Security-Policy that admits only its own inline script and style (by hash), and
//! connections only to the director and the single sign-on's token endpoint, so that text
//! from campaigns, vehicles or the audit log can never run as script even if escaping failed.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{Shared, ok_json};
use crate::oidc::ConsoleLogin;

/// The console page.
pub const PAGE: &str = include_str!("console.html");

/// `GET /v1/login`: how the console signs an operator in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginAnswer {
    /// The single sign-on, when the director is configured with a console client; absent, an
    /// operator uses the embedded credential (a client certificate, or a pasted token).
    pub sso: Option<ConsoleLogin>,
}

pub(super) async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let login = shared.gate.console_login();
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (
                header::CONTENT_SECURITY_POLICY,
                content_security_policy(login.as_ref()),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        PAGE,
    )
        .into_response()
}

pub(super) async fn login(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&LoginAnswer {
        sso: shared.gate.console_login(),
    })
}

/// The page's policy: its own inline script and style by hash, fetches to the director and
/// to the token endpoint's origin (the code exchange happens in the page), nothing else.
pub fn content_security_policy(login: Option<&ConsoleLogin>) -> String {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (scripts, styles) =
        HASHES.get_or_init(|| (inline_hashes(PAGE, "script"), inline_hashes(PAGE, "style")));
    let token_origin = login
        .and_then(|l| web_origin(&l.token_endpoint))
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; \
         connect-src 'self'{token_origin}; img-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// `'sha256-…'` of the content of each inline `<tag>` element of `page`.
fn inline_hashes(page: &str, tag: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut hashes = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    if hashes.is_empty() {
        "'none'".to_owned()
    } else {
        hashes.join(" ")
    }
}

/// The `https://host[:port]` origin of `url`, if it is an HTTP(S) URL whose origin can be
/// written into a policy as it is (the provider's discovery document is not trusted to put
/// anything else into a header).
fn web_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!authority.is_empty() && authority.chars().all(allowed))
        .then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_admits_the_pages_own_script_and_style_and_the_token_endpoint_only() {
        let login = ConsoleLogin {
            issuer: "https://sso.example.com/realms/ops".into(),
            authorization_endpoint: "https://sso.example.com/auth".into(),
            token_endpoint: "https://sso.example.com:8443/realms/ops/token".into(),
            client_id: "console".into(),
            resource: "urn:depotmesh:director".into(),
            scope: "openid".into(),
        };
        let policy = content_security_policy(Some(&login));
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(policy.contains("connect-src 'self' https://sso.example.com:8443;"));
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(policy.matches("'sha256-").count(), 2);
        assert!(content_security_policy(None).contains("connect-src 'self';"));
        // Nothing to load from outside: the page works with no way out of the depot LAN.
        for outside in [
            "src=\"http",
            "href=\"http",
            "@import",
            "url(http",
            "url(\"http",
            "url('http",
        ] {
            assert!(!PAGE.contains(outside), "{outside}");
        }
    }

    #[test]
    fn only_plain_origins_reach_the_policy() {
        assert_eq!(
            web_origin("https://127.0.0.1:4443/token").as_deref(),
            Some("https://127.0.0.1:4443")
        );
        for refused in [
            "https://evil.example; script-src *",
            "javascript://x",
            "https:///token",
            "https://a b/",
            "token",
        ] {
            assert_eq!(web_origin(refused), None, "{refused}");
        }
    }
}
