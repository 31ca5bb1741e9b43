//! The start-up check of the Meta access token: one `GET /me`, logged. Never fatal: an
//! upstream that is down while the service starts must not keep it from starting.

use tracing::{error, info, warn};

use crate::clients::MetaApi;

/// What Meta said about `META_ACCESS_TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Meta accepts the token; `owner` is the id of its (system) user.
    Accepted { owner: String },
    /// Meta refuses it (error 190, or HTTP 401/403): every migration would fail with
    /// `upstream_auth` until it is replaced.
    Refused { message: String },
    /// No verdict: Meta did not answer, or answered something else.
    Unknown { error: String },
}

/// Asks Meta whose token `meta` carries.
pub async fn meta_token(meta: &dyn MetaApi) -> TokenCheck {
    match meta.token_owner().await {
        Ok(owner) => TokenCheck::Accepted { owner },
        Err(e) => match e.upstream() {
            Some(u) if u.has_code(190) || matches!(u.http_status, Some(401 | 403)) => {
                TokenCheck::Refused {
                    message: u.message.clone(),
                }
            }
            _ => TokenCheck::Unknown {
                error: e.to_string(),
            },
        },
    }
}

impl TokenCheck {
    /// One log line: `info` when accepted, `error` when refused, `warn` without a verdict.
    pub fn log(&self, graph_version: &str) {
        match self {
            Self::Accepted { owner } => info!(
                token_owner = %owner,
                graph_version,
                "the Meta Graph API accepts META_ACCESS_TOKEN"
            ),
            Self::Refused { message } => error!(
                graph_version,
                upstream = %message,
                "the Meta Graph API refuses META_ACCESS_TOKEN: every migration will fail with upstream_auth until it is replaced (a system-user token with whatsapp_business_management and whatsapp_business_messaging)"
            ),
            Self::Unknown { error } => warn!(
                graph_version,
                error = %error,
                "could not check META_ACCESS_TOKEN with GET /me; migrations will tell"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use serde_json::json;
    use url::Url;
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::clients::MetaClient;

    async fn check(answer: ResponseTemplate) -> TokenCheck {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/me"))
            .and(query_param("fields", "id"))
            .and(header("authorization", "Bearer EAAGtoken"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let meta = MetaClient::new(
            Url::parse(&server.uri()).unwrap(),
            "v23.0".into(),
            SecretString::from("EAAGtoken"),
            reqwest::Client::new(),
        );
        meta_token(&meta).await
    }

    #[tokio::test]
    async fn meta_says_whether_it_takes_the_token() {
        assert_eq!(
            check(ResponseTemplate::new(200).set_body_json(json!({"id": "61550000000001"}))).await,
            TokenCheck::Accepted {
                owner: "61550000000001".into()
            }
        );
        let expired = json!({"error": {
            "message": "Error validating access token: Session has expired",
            "type": "OAuthException", "code": 190, "error_subcode": 463, "fbtrace_id": "Ab"
        }});
        match check(ResponseTemplate::new(401).set_body_json(expired)).await {
            TokenCheck::Refused { message } => assert!(message.contains("expired"), "{message}"),
            other => panic!("expected Refused, got {other:?}"),
        }
        // Meta down: no verdict, and the token is not called bad.
        assert!(matches!(
            check(ResponseTemplate::new(503)).await,
            TokenCheck::Unknown { .. }
        ));
    }
}
