pub mod app;
pub mod cache;
pub mod config;
pub mod http;
pub mod proxy;
pub mod server;
pub mod stream;
pub mod upstream;
