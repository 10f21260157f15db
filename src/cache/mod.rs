pub mod fill;
pub mod index;
pub mod key;
pub mod meta;
pub mod policy;
pub mod scan;
pub mod status;
pub mod store;
