//! The library behind `shoji-admin`, the administrator's client of Shoji's management endpoint:
//! HTTP/1.1 by hand over a `TcpStream` ([`http`]), request signatures with the admin key as
//! `shoji_mgmt::auth` defines them ([`client`]), and the errors with their messages and exit
//! codes ([`error`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod http;

pub use client::{load_key, Client, Nonce};
pub use error::{Defect, Error, Unreachable};
pub use http::Answer;
