//! Glue for HTTP frameworks.
//!
//! The core already produces an `http::Response` whose body implements
//! `http_body::Body` ([`Connection::into_http_response`](crate::Connection::into_http_response)),
//! and every refusal knows its HTTP status
//! ([`ConnectError::status`](crate::ConnectError::status),
//! [`PublishError::status`](crate::PublishError::status)), so any framework
//! built on the `http` crate can serve it. The adapters add only what needs a
//! framework's own traits. [`last_event_id`] is the core's, re-exported here
//! for handlers that read it themselves. CORS is the core's too
//! ([`cors`](crate::cors)): [`Hub::respond`](crate::Hub::respond) applies
//! the hub's policy on every path built on it, and the `http1` driver,
//! which writes answers itself, takes one in its `DriverConfig`.

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
pub mod deadline;
#[cfg(feature = "http1")]
#[cfg_attr(docsrs, doc(cfg(feature = "http1")))]
pub mod http1;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod hyper;

pub use crate::limits::MAX_LAST_EVENT_ID_LEN;
pub use crate::resume::last_event_id;
pub use deadline::{WriteDeadline, DEFAULT_WRITE_DEADLINE};
