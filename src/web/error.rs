//! `WebError`: every way a web request (or binding a web server) fails, and the HTTP status each
//! one answers with. The match in `status` has no `_` arm: a new variant forces a decision.

use std::net::SocketAddr;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::BindError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{key} value {value:?} is invalid")]
    BadBind {
        key: &'static str,
        value: String,
        #[source]
        source: BindError,
    },
    #[error("cannot listen on {key} {addr}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read random bytes for the dashboard's session keys")]
    Random(#[source] std::io::Error),
    #[error("authentication required: send the admin token as a bearer token or log in")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// Too many wrong tokens from this client or from everyone (`web::limiter`).
    #[error("too many wrong admin tokens; try again in {retry_after} s")]
    TooManyAttempts { retry_after: u64 },
    #[error("missing or wrong CSRF token")]
    Csrf,
    #[error("not found")]
    NotFound,
    /// The action cannot run on this node (disabled, or its task is missing).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The action is already running.
    #[error("{0}")]
    Conflict(&'static str),
    #[error("database query failed")]
    Db(#[source] DbError),
    #[error("background query did not finish")]
    Join(#[source] tokio::task::JoinError),
    #[error("rendering the page failed")]
    Render(#[source] askama::Error),
    #[error("encoding metrics failed")]
    Metrics(#[source] prometheus::Error),
    /// A maintenance action the node could not carry out.
    #[error("{0}")]
    Failed(String),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) | WebError::Csrf => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::Unavailable(_) | WebError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::BadBind { .. }
            | WebError::Bind { .. }
            | WebError::Random(_)
            | WebError::Join(_)
            | WebError::Render(_)
            | WebError::Metrics(_)
            | WebError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message with its causes, for the response body and the log.
    pub fn describe(&self) -> String {
        crate::error::Chain(self).to_string()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.describe(), "web request failed");
        }
        let body = serde_json::json!({ "error": self.describe() });
        let mut res = (status, Json(body)).into_response();
        if let WebError::TooManyAttempts { retry_after } = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}
