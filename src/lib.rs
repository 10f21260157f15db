pub mod access;
pub mod app;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod driver;
/// Property checks for the fuzz targets and their corpus replay (not used by the proxy).
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod stream;
pub mod tls;
pub mod upstream;
