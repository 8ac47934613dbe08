//! [`ApiError`]: every error answer of the API, and the one place where
//! errors become HTTP statuses.
//!
//! The body is always `{"error":{"code":N,"message":"..."}}` with
//! `Content-Type: application/json`, as the original's `sendError`.
//! Client refusals ([`client::Error::Refused`]) get their status and keep
//! their message;
//! registry and other internal failures become a 500 with an empty message
//! (the cause is logged here, once, and never shown to the caller).

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::client;
use crate::errors::ErrorChain;
use crate::schema::{ErrorBody, ErrorDetail};

/// The 503 message while fleetd cannot talk to etcd.
pub const UNAVAILABLE: &str = "fleet server unable to communicate with etcd";

/// An error answer: a status and a message (possibly empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status, also written as `code` in the body.
    pub status: StatusCode,
    /// The message; empty where the original sent none.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::refused(client::Refusal::BadRequest, message)
    }

    /// 404 with an empty message: no such path.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "")
    }

    /// 404 with this message: the thing does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::refused(client::Refusal::NotFound, message)
    }

    /// 408 with this message: the request body did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, message)
    }

    /// 413 with this message.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 415 with this message.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    /// The answer to a refusal of the registry client: its status, and its
    /// message as is.
    pub fn refused(refusal: client::Refusal, message: impl Into<String>) -> Self {
        match StatusCode::from_u16(refusal.status()) {
            Ok(status) => Self::new(status, message),
            Err(_) => Self::internal(&client::Error::refused(refusal, message)),
        }
    }

    /// 405 with this message.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, message)
    }

    /// 503 while fleetd cannot talk to etcd.
    pub fn unavailable() -> Self {
        Self::refused(client::Refusal::Unavailable, UNAVAILABLE)
    }

    /// 500 with an empty message, after logging what went wrong.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %ErrorChain(cause), "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "")
    }
}

impl From<client::Error> for ApiError {
    fn from(err: client::Error) -> Self {
        match err {
            client::Error::Refused { refusal, message } => ApiError::refused(refusal, message),
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.status.as_u16(),
                message: self.message,
            },
        };
        json_response(self.status, &body)
    }
}

/// A JSON answer with this status.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an API answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
